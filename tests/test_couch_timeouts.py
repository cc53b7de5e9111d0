"""Timeouts of streamed transfers against the real server, through a fault proxy.

A request's timeout counts silence: an attachment that keeps moving, however slowly, is
never cut, and one whose bytes stop (a server or path hung mid-answer, a producer that
stalled) ends with :class:`CouchTimeout` instead of hanging forever.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import TaskStopped
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from gateway.couch import CouchServer, CouchTimeout, Database
from gateway.couch.transport import CouchTransport
from gateway.errors import CouchUnreachable
from tests.conftest import CouchBackend
from tests.support.faultproxy import FaultProxy

TIMEOUT = 1.0
#: Room for a busy machine between the timeout and the moment it is seen.
MARGIN = 4.0


@implementer(IBodyProducer)
class TrickleBody:
    """Writes ``chunks`` chunks, one every ``interval`` seconds (or stalls after ``stall_at``)."""

    def __init__(self, reactor: Any, chunk: bytes, chunks: int, interval: float,
                 stall_at: int | None = None) -> None:
        self.reactor, self.chunk, self.chunks, self.interval = reactor, chunk, chunks, interval
        self.stall_at = stall_at
        self.length = len(chunk) * chunks
        self.written = 0
        self._done: Deferred[None] | None = None
        self._call: Any = None

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        self._next()
        return self._done

    def _next(self) -> None:
        assert self._done is not None
        if self.written == self.chunks:
            self._done.callback(None)
            return
        if self.written == self.stall_at:
            return  # never writes again
        self._consumer.write(self.chunk)
        self.written += 1
        self._call = self.reactor.callLater(self.interval, self._next)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._done is not None and not self._done.called:
            self._done.errback(TaskStopped())


@pytest_twisted.async_yield_fixture
async def proxied(
    couch_backend: CouchBackend, admin: CouchServer, db: Database, reactor: Any
) -> AsyncIterator[tuple[FaultProxy, Database]]:
    """The test database through a fault proxy, with a short request timeout."""
    proxy = FaultProxy(reactor, int(couch_backend.url.rsplit(":", 1)[1]))
    proxy.listen()
    pool = HTTPConnectionPool(reactor, persistent=True)
    through = CouchServer(proxy.url, reactor=reactor, pool=pool, auth=admin.transport.auth,
                          timeout=TIMEOUT)
    try:
        yield proxy, through.database(db.name)
    finally:
        await proxy.close()
        await pool.closeCachedConnections()


async def _stored(db: Database, size: int) -> bytes:
    content = os.urandom(size)
    await db.put_attachment("big", "blob.bin", content)
    return content


async def test_get_attachment_whose_body_stops_times_out(
    proxied: tuple[FaultProxy, Database], db: Database
) -> None:
    proxy, through = proxied
    content = await _stored(db, 4 << 20)
    proxy.stall_after(256 * 1024)  # the headers and a part of the body, then silence
    started = time.monotonic()
    with pytest.raises(CouchTimeout, match="sent nothing"):
        await through.get_attachment("big", "blob.bin")
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + MARGIN
    proxy.resume()
    assert await through.get_attachment("big", "blob.bin") == content  # a fresh connection


async def test_streamed_download_whose_body_stops_times_out(
    proxied: tuple[FaultProxy, Database], db: Database
) -> None:
    proxy, through = proxied
    await _stored(db, 4 << 20)
    received: list[int] = []
    proxy.stall_after(256 * 1024)
    with pytest.raises(CouchTimeout):
        await through.download_attachment("big", "blob.bin", lambda c: received.append(len(c)))
    assert 0 < sum(received) < 4 << 20


async def test_slow_download_that_keeps_moving_is_not_cut(
    proxied: tuple[FaultProxy, Database], db: Database, reactor: Any
) -> None:
    """A consumer that pauses the download for longer than the timeout is not a stall."""
    _, through = proxied
    content = await _stored(db, 2 << 20)
    sink = PausingSink(reactor, pause_for=TIMEOUT * 1.5)
    assert await through.download_attachment("big", "blob.bin", sink) == len(content)
    assert b"".join(sink.chunks) == content
    assert sink.pauses >= 1


async def test_slow_upload_that_keeps_moving_outlives_the_timeout(
    proxied: tuple[FaultProxy, Database], db: Database, reactor: Any
) -> None:
    _, through = proxied
    body = TrickleBody(reactor, os.urandom(16 * 1024), chunks=12, interval=TIMEOUT / 4)
    started = time.monotonic()
    result = await through.put_attachment("slow", "up.bin", body)
    assert time.monotonic() - started > TIMEOUT * 2  # it took longer than the timeout
    assert result["ok"] is True and body.written == 12
    assert await db.get_attachment("slow", "up.bin") == body.chunk * 12


async def test_upload_that_stops_moving_times_out(
    proxied: tuple[FaultProxy, Database], db: Database, reactor: Any
) -> None:
    _, through = proxied
    body = TrickleBody(reactor, os.urandom(16 * 1024), chunks=12, interval=0.05, stall_at=3)
    started = time.monotonic()
    with pytest.raises(CouchTimeout):
        await through.put_attachment("stalled", "up.bin", body)
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + MARGIN
    info = await db.info()
    assert info["doc_count"] == 0  # nothing half-written was stored


@implementer(IConsumer)
class PausingSink:
    """An ``IConsumer`` that pauses its producer after every 512 KiB for a while."""

    def __init__(self, reactor: Any, pause_for: float) -> None:
        self.reactor, self.pause_for = reactor, pause_for
        self.chunks: list[bytes] = []
        self.producer: Any = None
        self.pauses = 0
        self._since_pause = 0
        self.unregistered = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.unregistered = True

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self._since_pause += len(data)
        if self._since_pause >= 512 * 1024 and self.pauses < 2:
            self._since_pause = 0
            self.pauses += 1
            self.producer.pauseProducing()
            self.reactor.callLater(self.pause_for, self.producer.resumeProducing)



class HeartbeatAnswer(Resource):
    """A normal ``_changes`` answer kept alive by heartbeat lines, as CouchDB sends one
    while a filter scans for matches; it stops for good after ``stall_after`` lines."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self, reactor: Any, lines: int, interval: float,
                 stall_after: int | None = None) -> None:
        super().__init__()
        self.reactor, self.lines, self.interval = reactor, lines, interval
        self.stall_after = stall_after

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"Content-Type", b"application/json")
        request.write(b'{"results":[\n')
        self._beat(request, 0)
        return NOT_DONE_YET

    def _beat(self, request: Any, sent: int) -> None:
        if sent == self.stall_after:
            return  # silence from here on
        if sent == self.lines:
            request.write(b'{"seq":"7-x","id":"match","changes":[{"rev":"1-a"}]}\n'
                          b'],\n"last_seq":"9-y"}\n')
            request.finish()
            return
        request.write(b"\n")
        self.reactor.callLater(self.interval, self._beat, request, sent + 1)


@pytest.mark.parametrize("stall_after", [None, 2])
async def test_an_answer_kept_alive_by_heartbeats_outlives_the_timeout(
    reactor: Any, stall_after: int | None
) -> None:
    """Bytes of an answer push the timeout back (a filtered catch-up read scanning for
    long); an answer that stops moving still ends in CouchTimeout."""
    port = reactor.listenTCP(0, Site(HeartbeatAnswer(reactor, 8, TIMEOUT / 3, stall_after)),
                             interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    couch = CouchServer(f"http://127.0.0.1:{port.getHost().port}", reactor=reactor, pool=pool,
                        timeout=TIMEOUT)
    started = time.monotonic()
    try:
        if stall_after is None:
            answer = await couch.transport.request("GET", ["db", "_changes"])
            assert answer["last_seq"] == "9-y" and answer["results"][0]["id"] == "match"
            assert time.monotonic() - started > TIMEOUT * 2  # lived past the timeout
        else:
            with pytest.raises(CouchTimeout):
                await couch.transport.request("GET", ["db", "_changes"])
            assert time.monotonic() - started < TIMEOUT * 2 + MARGIN
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()


class _ResolvingAgent:
    """An agent still resolving CouchDB's host name, as ``HostnameEndpoint`` does."""

    def __init__(self, outcome: Exception | None = None) -> None:
        self.outcome = outcome

    def request(self, *args: Any) -> Deferred[Any]:
        def cancel(pending: Deferred[Any]) -> None:
            # What HostnameEndpoint does when cancelled in the middle of a lookup.
            pending.errback(DNSLookupError("Couldn't find the hostname '127.0.0.1'."))

        pending: Deferred[Any] = Deferred(cancel)
        if self.outcome is not None:
            pending.errback(self.outcome)
        return pending


async def test_a_name_that_does_not_resolve_is_couchdb_unreachable(reactor: Any) -> None:
    transport = CouchTransport("http://couchdb:5984", reactor, timeout=None)
    transport._agent = _ResolvingAgent(DNSLookupError("no such host"))  # type: ignore[assignment]
    with pytest.raises(CouchUnreachable, match="DNSLookupError"):
        await transport.send("GET", ["db"])


async def test_cancelled_while_resolving_is_a_cancellation(reactor: Any) -> None:
    """A client that leaves while the host name resolves is not CouchDB unreachable."""
    transport = CouchTransport("http://couchdb:5984", reactor, timeout=None)
    transport._agent = _ResolvingAgent()  # type: ignore[assignment]
    for start in (lambda: transport.send("GET", ["db"]),
                  lambda: transport.open_stream("GET", ["db", "doc", "att"])):
        pending: Deferred[Any] = Deferred.fromCoroutine(start())
        pending.cancel()
        with pytest.raises(CancelledError):
            await pending
