"""The shutdown paths of ``gateway/http/request.py``: the drain and the grace's cut.

docs/rest-api.md (WALLABY_SHUTDOWN_DRAIN): after SIGTERM the gateway serves on "with
``Connection: close``" so that clients' next requests open connections elsewhere.
``gateway.http.request.shutdown_cut``: a write whose body was still arriving when the grace
ran out cannot have been applied (CouchDB applies no cut upload): it may simply be sent
again (503 with Retry-After), unlike one whose whole body had arrived.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred

from gateway.http.request import SHUTDOWN_CUT, shutdown_cut
from tests.rest.conftest import StartGateway


async def _head(url: str) -> bytes:
    """A keep-alive HTTP/1.1 GET /health; the head of its answer (lower case)."""
    from tests.rest.test_attachments import _connect, _until

    raw = await _connect(url)
    raw.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await _until(lambda: b"\r\n\r\n" in raw.data, raw=raw)
    raw.transport.loseConnection()
    return raw.data.partition(b"\r\n\r\n")[0].lower()


async def test_answers_close_their_connection_while_draining(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway()
    before = await _head(gateway.url)
    assert before.startswith(b"http/1.1 200") and b"connection: close" not in before, before
    draining = Deferred.fromCoroutine(gateway.service.drain(1.0))
    during = await _head(gateway.url)
    await draining
    assert b"\r\nconnection: close" in during, during


async def test_a_stopped_gateway_no_longer_accepts_connections(
    start_gateway: StartGateway,
) -> None:
    """SIGTERM: the listening socket closes first (a load balancer's next connection is
    refused at once and goes elsewhere, instead of being served by a gateway that is
    about to cut it)."""
    gateway = await start_gateway()
    assert (await _head(gateway.url)).startswith(b"http/1.1 200")
    await gateway.service.stopService()
    with pytest.raises(error.ConnectionRefusedError):
        await _head(gateway.url)


def test_a_write_cut_while_its_body_still_arrived_may_be_sent_again() -> None:
    cut = shutdown_cut(SimpleNamespace(method=b"PUT", route="putAttachment", _body_done=False))
    assert cut.args == (SHUTDOWN_CUT,)
    assert cut.retry_after is not None
    applied = shutdown_cut(SimpleNamespace(method=b"PUT", route="putDocument", _body_done=True))
    assert applied.retry_after is None
