"""F5: the gateway listens with a large backlog (a reconnect storm must not overflow it)."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactor

from gateway.http.service import LISTEN_BACKLOG, GatewayService


class _App:
    def site(self) -> Any:
        return object()


def test_gateway_listens_with_a_large_backlog() -> None:
    reactor = MemoryReactor()
    service = GatewayService(_App(), reactor, "127.0.0.1", 0)  # type: ignore[arg-type]
    service.startService()
    (_port, _factory, backlog, interface), = reactor.tcpServers
    assert backlog == LISTEN_BACKLOG >= 1024 and interface == "127.0.0.1"


def test_backlog_can_be_chosen() -> None:
    reactor = MemoryReactor()
    GatewayService(_App(), reactor, "127.0.0.1", 0, backlog=4096).startService()  # type: ignore[arg-type]
    assert reactor.tcpServers[0][2] == 4096
