"""The Twisted Web resource of the WebSocket endpoint: each connection gets its request.

Autobahn's ``WebSocketResource`` takes the socket over from the HTTP request that asked
for the upgrade, and that request never finishes: its ``notifyFinish()`` Deferreds
never fire (no access-log line is written), and the request, its HTTP channel and those
Deferreds stay in a reference cycle that only a full collection of the cycle collector
frees (see :mod:`gateway.gc_watch`). :class:`UpgradingResource` gives the connection
its request, and the connection ends the request as soon as the handshake is decided:
when it opens (status 101), or when a refused handshake's socket closes.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.protocols.policies import ProtocolWrapper

from gateway.errors import UpgradeRequired
from gateway.http.responses import render_error

__all__ = ["UpgradingResource", "served_protocol"]


def served_protocol(transport: Any) -> Any:
    """The protocol now serving a socket Autobahn took over (wrapped or not).

    The same three cases as ``WebSocketResource.render``.
    """
    if isinstance(transport, ProtocolWrapper):
        return transport.wrappedProtocol
    protocol = getattr(transport, "protocol", None)
    if isinstance(protocol, ProtocolWrapper):
        return protocol.wrappedProtocol
    return protocol


class UpgradingResource(WebSocketResource):  # type: ignore[misc,unused-ignore]
    """A ``WebSocketResource`` that hands its request to the connection it starts."""

    def render(self, request: Any) -> Any:
        """Upgrade the request's socket and hand the request to its new connection.

        A request that does not ask for a WebSocket gets the gateway's error envelope
        (426), not Autobahn's status page (which names the library and its version).
        """
        if (request.getHeader("upgrade") or "").strip().lower() != "websocket":
            request.setHeader("Upgrade", "websocket")
            return render_error(request, UpgradeRequired(
                "this endpoint speaks WebSocket only (see docs/websocket.md)"))
        transport = request.channel.transport
        result = super().render(request)  # type: ignore[no-untyped-call,unused-ignore]
        if transport is not None and request.channel.transport is None:
            connection = served_protocol(transport)
            if hasattr(connection, "adopt_upgrade_request"):
                connection.adopt_upgrade_request(request)
        return result
