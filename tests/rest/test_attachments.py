"""Attachments: streamed up and down, Content-Type kept, ETag/304, Range/206, lengths."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import treq
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.web.server import NOT_DONE_YET

from gateway.couch import CouchServer, Database
from gateway.errors import NotFound
from tests.conftest import CouchBackend
from tests.rest.conftest import Scenario, StartGateway, basic
from tests.support.couchranges import CouchRangeRelay


async def _doc(scenario: Scenario, doc: str = "doc") -> tuple[str, str]:
    base = f"/api/v1/db/{scenario.db.name}/docs/{doc}"
    made = await scenario.member_client.put(base, json_body={"title": "with files"})
    return base, made.json["rev"]


async def test_upload_download_etag_range_and_delete(scenario: Scenario) -> None:
    client = scenario.member_client
    base, rev = await _doc(scenario)
    payload = os.urandom(300_000) + b"tail"
    url = f"{base}/attachments/dir%2Fphoto.jpg"
    up = await client.put(f"{url}?rev={rev}", data=payload, headers={"Content-Type": "image/jpeg"})
    assert up.status == 201 and up.json["ok"] is True
    rev2 = up.json["rev"]

    down = await client.get(url)
    assert down.status == 200 and down.body == payload
    assert down.header("Content-Type") == "image/jpeg"
    assert down.length == len(payload)  # Content-Length
    etag = down.header("ETag")
    assert etag

    cached = await client.get(url, headers={"If-None-Match": etag})
    assert cached.status == 304 and cached.body == b""
    changed = await client.get(url, headers={"If-None-Match": '"other"'})
    assert changed.status == 200

    part = await client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status == 206 and part.body == payload[10:20]
    assert part.header("Content-Range") == f"bytes 10-19/{len(payload)}"
    assert part.length == 10
    suffix = await client.get(url, headers={"Range": "bytes=-4"})
    assert suffix.status == 206 and suffix.body == b"tail"
    beyond = await client.get(url, headers={"Range": f"bytes={len(payload) + 5}-"})
    assert beyond.status == 416
    # If-Range (RFC 9110 13.1.5): the range only of the version named; another (or a
    # date: attachments have no Last-Modified) gets the whole body.
    same = await client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert same.status == 206 and same.body == payload[10:20]
    for stale_version in ('"1-stale"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        whole = await client.get(url, headers={"Range": "bytes=10-19", "If-Range": stale_version})
        assert whole.status == 200 and whole.body == payload, stale_version

    head = await client.request("HEAD", url)
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(payload))  # kept in headers for HEAD
    # Only GET has ranges (RFC 9110 14.2): HEAD describes the whole representation.
    head_range = await client.request("HEAD", url, headers={"Range": "bytes=0-0"})
    assert head_range.status == 200 and head_range.header("Content-Range") is None
    assert head_range.header("Content-Length") == str(len(payload))

    doc = await client.get(f"{base}?attachments=false")
    stub = doc.json["_attachments"]["dir/photo.jpg"]
    assert stub["length"] == len(payload) and stub["content_type"] == "image/jpeg"
    with_data = await client.get(f"{base}?attachments=true")
    assert with_data.json["_attachments"]["dir/photo.jpg"]["data"]

    stale = await client.put(f"{url}?rev={rev}", data=b"x", headers={"Content-Type": "text/plain"})
    assert stale.status == 409
    gone = await client.delete(url, headers={"If-Match": rev2})
    assert gone.status == 200
    missing = await client.get(url)
    assert missing.status == 404 and missing.json["error"] == "not_found"


async def test_download_streams_in_chunks(scenario: Scenario) -> None:
    """The body arrives through the relay unchanged (digest of 3 MB, several chunks)."""
    client = scenario.member_client
    base, rev = await _doc(scenario)
    payload = os.urandom(3 * 1024 * 1024)
    url = f"{base}/attachments/big.bin"
    up = await client.put(f"{url}?rev={rev}", data=payload,
                          headers={"Content-Type": "application/octet-stream"})
    assert up.status == 201
    response = await client.open("GET", url)
    chunks: list[int] = []
    digest = hashlib.sha256()

    def collect(chunk: bytes) -> None:
        chunks.append(len(chunk))
        digest.update(chunk)

    import treq

    await treq.collect(response, collect)
    assert response.code == 200 and sum(chunks) == len(payload) and len(chunks) > 1
    assert digest.digest() == hashlib.sha256(payload).digest()


async def test_an_html_attachment_is_sandboxed_as_couchdb_does(
    scenario: Scenario, start_gateway: StartGateway
) -> None:
    """Stored HTML served on the API's origin must not run script with the reader's
    session: CouchDB 3.2+ sends ``Content-Security-Policy: sandbox``, and so does the
    gateway, whatever the server behind it sends (pouchdb-server sends none)."""
    base = f"/api/v1/db/{scenario.db.name}/docs/page"
    rev = (await scenario.member_client.put(base, json_body={"t": 1})).json["rev"]
    up = await scenario.member_client.put(
        f"{base}/attachments/x.html?rev={rev}",
        data=b"<script>fetch('/api/v1/session')</script>", headers={"Content-Type": "text/html"})
    assert up.status == 201
    for method in ("GET", "HEAD"):
        down = await scenario.member_client.request(method, f"{base}/attachments/x.html")
        assert down.status == 200 and down.header("Content-Type") == "text/html"
        assert down.header("Content-Security-Policy") == "sandbox", method
    ranged = await scenario.member_client.get(
        f"{base}/attachments/x.html", headers={"Range": "bytes=0-7"})
    assert ranged.status == 206 and ranged.header("Content-Security-Policy") == "sandbox"
    # An app that serves its own trusted pages from attachments may turn it off.
    trusting = await start_gateway(attachment_csp="")
    plain = await trusting.as_user(scenario.member).get(f"{base}/attachments/x.html")
    assert plain.status == 200 and plain.header("Content-Security-Policy") is None


async def test_a_range_of_an_empty_attachment_is_the_whole_of_it(scenario: Scenario) -> None:
    """``bytes=-5`` of nothing was a 206 with ``Content-Range: bytes 0--1/0``."""
    base = f"/api/v1/db/{scenario.db.name}/docs/empty"
    rev = (await scenario.member_client.put(base, json_body={})).json["rev"]
    up = await scenario.member_client.put(
        f"{base}/attachments/none.bin?rev={rev}", data=b"",
        headers={"Content-Type": "application/octet-stream"})
    assert up.status == 201
    suffix = await scenario.member_client.get(
        f"{base}/attachments/none.bin", headers={"Range": "bytes=-5"})
    assert (suffix.status, suffix.body, suffix.header("Content-Range")) == (200, b"", None)
    start = await scenario.member_client.get(
        f"{base}/attachments/none.bin", headers={"Range": "bytes=0-"})
    assert start.status == 416 and start.header("Content-Range") == "bytes */0"


class _ReplacedBeforeItsStub(CouchRangeRelay):
    """Replaces the attachment just before the gateway reads its stub (a concurrent write)."""

    armed: tuple[str, str, bytes, str] | None = None  # (db, doc, new bytes, auth header)

    def render(self, request: Any) -> Any:
        segments = [s for s in request.path.split(b"/") if s]
        if self.armed is not None and request.method == b"GET" and len(segments) == 2:
            armed, self.armed = self.armed, None
            defer.Deferred.fromCoroutine(self._replace(armed)).addBoth(
                lambda _: CouchRangeRelay.render(self, request))
            return NOT_DONE_YET
        return super().render(request)

    async def _replace(self, armed: tuple[str, str, bytes, str]) -> None:
        db, doc, data, auth = armed
        got = await treq.get(f"{self.upstream}/{db}/{doc}", headers={"Authorization": auth})
        rev = (await treq.json_content(got))["_rev"]
        put = await treq.put(f"{self.upstream}/{db}/{doc}/a.bin?rev={rev}", data=data,
                             headers={"Authorization": auth,
                                      "Content-Type": "application/octet-stream"})
        assert put.code == 201, await treq.content(put)


async def test_a_range_never_mixes_two_versions_of_an_attachment(
    start_gateway: StartGateway, couch_backend: CouchBackend, reactor: Any, db: Database
) -> None:
    """The length of a range the gateway cuts comes from a second request (the stub): it
    must be the length of the body in hand, or a client resuming with If-Range is told
    a file is complete at another version's length."""
    relay = _ReplacedBeforeItsStub(couch_backend.url, reactor)
    port = reactor.listenTCP(0, relay.site(), interface="127.0.0.1")
    try:
        gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{port.getHost().port}")
        auth = basic(couch_backend.admin_username, couch_backend.admin_password)
        client = gateway.client.with_headers(auth)
        old, new = bytes(range(256)) * 4, b"N" * 100
        await db.put_attachment("doc", "a.bin", old, content_type="application/octet-stream")
        url = f"/api/v1/db/{db.name}/docs/doc/attachments/a.bin"
        etag = (await client.get(url)).header("ETag")
        relay.armed = (db.name, "doc", new, auth["Authorization"])
        reply = await client.get(url, headers={"Range": "bytes=0-499", "If-Range": etag})
        assert relay.armed is None  # the attachment was replaced between the two requests
        if reply.status == 206:
            assert reply.header("Content-Range") == f"bytes 0-499/{len(old)}"
            assert reply.body == old[:500] and reply.header("ETag") == etag
        else:  # the whole of the version its ETag names
            assert reply.status == 200, reply.status
            assert reply.body == (old if reply.header("ETag") == etag else new)
    finally:
        await port.stopListening()


async def test_attachment_names_are_validated(scenario: Scenario) -> None:
    base, rev = await _doc(scenario)
    for name in ("_reserved", "a%2F%2Fb", "a%2F..%2Fb", "%2Fa"):
        reply = await scenario.member_client.put(
            f"{base}/attachments/{name}?rev={rev}", data=b"x",
            headers={"Content-Type": "text/plain"},
        )
        assert reply.status == 400, name


async def test_local_documents_have_no_attachments(scenario: Scenario) -> None:
    """``_local/l/x`` is another local document: CouchDB refuses, and so does the gateway."""
    client, db = scenario.member_client, scenario.db.name
    local = f"/api/v1/db/{db}/docs/_local%2Fl"
    assert (await client.put(local, json_body={"v": 1})).status == 201
    url = f"{local}/attachments/x"
    put = await client.put(url, data=b"abc", headers={"Content-Type": "text/plain"})
    assert put.status == 400 and "_local" in put.json["reason"]
    for method in ("GET", "HEAD", "DELETE"):
        assert (await client.request(method, url)).status == 400, method
    assert (await client.get(f"/api/v1/db/{db}/docs/_local%2Fl")).json["v"] == 1
    with pytest.raises(NotFound):  # no stray local document was made upstream either
        await scenario.db.get("_local/l/x")


# -- streamed uploads (dispatched at the headers, body piped upstream) -------------


class _Raw(Protocol):
    """A raw HTTP/1.1 client connection: what was received, and when it closed."""

    def __init__(self) -> None:
        self.data = b""
        #: Fires with the ``time.monotonic()`` of the close.
        self.closed: defer.Deferred[float] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(time.monotonic())


async def _connect(base: str) -> _Raw:
    from twisted.internet import reactor

    parts = urlsplit(base)
    raw = _Raw()
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname or "127.0.0.1", parts.port or 80)
    await connectProtocol(endpoint, raw)
    return raw


async def _until(check: Any, seconds: float = 10.0, raw: _Raw | None = None) -> None:
    from twisted.internet import reactor

    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"not met in time; received {raw.data if raw else b''!r}")


def _put_head(path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: gw", f"Content-Length: {length}",
             "Content-Type: application/octet-stream", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_streamed_upload_with_expect_continue_and_keep_alive(scenario: Scenario) -> None:
    client = scenario.member_client
    base, rev = await _doc(scenario)
    payload = os.urandom(700_000)
    raw = await _connect(client.base)
    auth = {k: v for k, v in client.default_headers.items() if k == "Authorization"}
    raw.transport.write(_put_head(f"{base}/attachments/s.bin?rev={rev}", len(payload),
                                  {**auth, "Expect": "100-continue"}))
    await _until(lambda: b"100 Continue" in raw.data)
    raw.transport.write(payload[:300_000])
    raw.transport.write(payload[300_000:])
    await _until(lambda: b"HTTP/1.1 201" in raw.data, raw=raw)
    # The same connection serves the next request.
    raw.transport.write(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
    await _until(lambda: raw.data.count(b"HTTP/1.1 200") == 1)
    raw.transport.loseConnection()
    down = await client.get(f"{base}/attachments/s.bin")
    assert down.status == 200 and down.body == payload


async def test_streamed_upload_answers_401_before_the_body_and_drains_it(
    scenario: Scenario,
) -> None:
    base, rev = await _doc(scenario)
    raw = await _connect(scenario.member_client.base)
    raw.transport.write(_put_head(f"{base}/attachments/n.bin?rev={rev}", 200_000, {}))
    await _until(lambda: b"HTTP/1.1 401" in raw.data)  # nothing of the body sent yet
    raw.transport.write(b"x" * 200_000)
    raw.transport.write(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
    await _until(lambda: b"HTTP/1.1 200" in raw.data)  # still in step, still open
    raw.transport.loseConnection()


async def test_a_client_waiting_for_100_continue_is_refused_before_it_sends_the_body(
    scenario: Scenario,
) -> None:
    """RFC 9110 10.1.1: ``Expect: 100-continue`` lets a client learn of a refusal before
    it sends a large body; leave to send is given only once the caller is known (what
    the caller may write is CouchDB's to say, once the upstream request has begun)."""
    base, rev = await _doc(scenario)
    stranger = await _connect(scenario.member_client.base)
    stranger.transport.write(_put_head(f"{base}/attachments/n.bin?rev={rev}", 10**9,
                                       {"Expect": "100-continue"}))
    await _until(lambda: b"HTTP/1.1 401" in stranger.data)
    await stranger.closed  # no body is awaited: the connection is closed, as announced
    assert b"100 Continue" not in stranger.data
    assert b"\r\nconnection: close\r\n" in stranger.data.lower()


def _chunked_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: gw", "Transfer-Encoding: chunked",
             "Content-Type: application/octet-stream", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def test_a_chunked_upload_is_stored_only_once_the_caller_is_known(
    scenario: Scenario,
) -> None:
    """Without a Content-Length, Twisted stores the whole body (up to the attachment cap,
    4 GiB) before the handler runs: an anonymous client could fill the disk, and was told
    ``100 Continue`` first. The handler now runs at the headers and spools after."""
    base, rev = await _doc(scenario)
    spooled = _open_deleted_files()
    waiting = await _connect(scenario.member_client.base)
    waiting.transport.write(_chunked_head(f"{base}/attachments/c.bin?rev={rev}",
                                          {"Expect": "100-continue"}))
    await _until(lambda: b"HTTP/1.1 401" in waiting.data)
    await waiting.closed
    assert b"100 Continue" not in waiting.data
    assert b"\r\nconnection: close\r\n" in waiting.data.lower()
    eager = await _connect(scenario.member_client.base)
    eager.transport.write(_chunked_head(f"{base}/attachments/c.bin?rev={rev}", {}))
    for _ in range(3):
        eager.transport.write(_chunk(b"x" * 1_000_000))
    await _until(lambda: b"HTTP/1.1 401" in eager.data)  # before the body's end
    assert _open_deleted_files() == spooled  # nothing of it was stored
    await eager.closed  # the rest of a body of no known length is not read
    # A member's chunked upload, with or without Expect, is stored whole.
    payload = os.urandom(300_000)
    member = await _connect(scenario.member_client.base)
    auth = {k: v for k, v in scenario.member_client.default_headers.items()
            if k == "Authorization"}
    member.transport.write(_chunked_head(f"{base}/attachments/c.bin?rev={rev}",
                                         {**auth, "Expect": "100-continue"}))
    await _until(lambda: b"100 Continue" in member.data)
    member.transport.write(_chunk(payload[:100_000]) + _chunk(payload[100_000:]) + b"0\r\n\r\n")
    await _until(lambda: b"HTTP/1.1 201" in member.data, raw=member)
    member.transport.loseConnection()
    down = await scenario.member_client.get(f"{base}/attachments/c.bin")
    assert down.status == 200 and down.body == payload


async def test_a_chunked_upload_over_the_cap_is_413_and_closed(
    scenario: Scenario, start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(max_attachment_bytes=50_000)
    base, rev = await _doc(scenario)
    raw = await _connect(gateway.url)
    auth = basic(scenario.member.name, scenario.member.password)
    raw.transport.write(_chunked_head(f"{base}/attachments/big.bin?rev={rev}", auth))
    for _ in range(4):
        raw.transport.write(_chunk(b"y" * 20_000))
    await _until(lambda: b"HTTP/1.1 413" in raw.data, raw=raw)
    await raw.closed
    assert b"\r\nconnection: close\r\n" in raw.data.lower()
    missing = await gateway.as_user(scenario.member).get(f"{base}/attachments/big.bin")
    assert missing.status == 404


async def test_a_chunked_upload_answered_early_says_it_closes(scenario: Scenario) -> None:
    """Its 401 comes before the end of a body of no known length, which is not read to
    its end: the answer says ``Connection: close``, and the connection closes."""
    base, rev = await _doc(scenario)
    raw = await _connect(scenario.member_client.base)
    raw.transport.write(_chunked_head(f"{base}/attachments/c.bin?rev={rev}", {})
                        + _chunk(b"z" * 100_000))
    await _until(lambda: b"HTTP/1.1 401" in raw.data)
    await raw.closed
    assert b"\r\nconnection: close\r\n" in raw.data.lower()


@pytest.mark.parametrize("method", ["DELETE", "POST", "GET"])
async def test_a_body_to_an_attachment_path_is_a_json_body_unless_put(
    method: str, scenario: Scenario, start_gateway: StartGateway,
) -> None:
    """Only a PUT there is an upload, read once its caller is known; any other method's
    body was allowed the attachment cap (4 GiB) and stored before the handler ran."""
    gateway = await start_gateway(max_body_bytes=2_000)
    base, rev = await _doc(scenario)
    target = f"{base}/attachments/a.bin?rev={rev}"
    declared = await _connect(gateway.url)
    declared.transport.write(
        _put_head(target, 3_000_000, {}).replace(b"PUT ", f"{method} ".encode(), 1)
        + b"x" * 3_000_000)
    await _until(lambda: b"HTTP/1.1 413" in declared.data, raw=declared)
    declared.transport.loseConnection()
    chunked = await _connect(gateway.url)
    chunked.transport.write(
        _chunked_head(target, {}).replace(b"PUT ", f"{method} ".encode(), 1))
    for _ in range(3):
        chunked.transport.write(_chunk(b"x" * 1_000_000))
    await task.deferLater(_reactor(), 0.5, lambda: None)
    assert _spooled_bytes() < 100_000  # past the JSON cap, the rest is dropped
    chunked.transport.write(b"0\r\n\r\n")
    await _until(lambda: b"HTTP/1.1 413" in chunked.data, raw=chunked)
    chunked.transport.loseConnection()


async def test_a_chunked_upload_gets_the_upstream_time_its_size_needs(
    scenario: Scenario, start_gateway: StartGateway,
) -> None:
    """The upstream deadline of an upload grows with its size; a chunked one's size is
    known once it is spooled (it was counted as 0: a 504, and the attachment stored)."""
    gateway = await start_gateway(request_timeout=0.3)
    auth = basic(scenario.member.name, scenario.member.password)
    payload = os.urandom(12_000_000)
    base, rev = await _doc(scenario, "chunked")
    raw = await _connect(gateway.url)
    raw.transport.write(_chunked_head(f"{base}/attachments/a.bin?rev={rev}", auth))
    for start in range(0, len(payload), 1 << 20):
        raw.transport.write(_chunk(payload[start:start + (1 << 20)]))
    raw.transport.write(b"0\r\n\r\n")
    await _until(lambda: b"\r\n\r\n{" in raw.data and raw.data.endswith(b"}"), 60, raw)
    raw.transport.loseConnection()
    assert raw.data.startswith(b"HTTP/1.1 201"), raw.data[:200]


async def test_a_failed_upload_closes_its_spool(
    scenario: Scenario, couch_backend: CouchBackend, reactor: Any, start_gateway: StartGateway,
) -> None:
    """A spooled body whose upstream PUT fails was left open until the collector ran."""
    relay = CouchRangeRelay(couch_backend.url, reactor)  # a door to CouchDB that can shut
    port = reactor.listenTCP(0, relay.site(), interface="127.0.0.1")
    gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{port.getHost().port}")
    base, rev = await _doc(scenario)
    assert (await gateway.as_user(scenario.member).get(base)).status == 200  # identity cached
    await port.stopListening()  # CouchDB is gone once the caller is authenticated
    await gateway.service.pool.closeCachedConnections()
    spools = _open_deleted_files()
    raw = await _connect(gateway.url)
    auth = basic(scenario.member.name, scenario.member.password)
    raw.transport.write(_chunked_head(f"{base}/attachments/c.bin?rev={rev}", auth)
                        + _chunk(b"x" * 300_000) + b"0\r\n\r\n")
    await _until(lambda: b"HTTP/1.1 503" in raw.data, raw=raw)
    raw.transport.loseConnection()
    await _until(lambda: gateway.app.in_flight.count == 0)
    assert _open_deleted_files() <= spools, "the spooled body is still open"


_CONFLICT = b'{"error":"conflict","reason":"Document update conflict."}\n'


class _Pass(Protocol):
    """One side of a relay: what it receives goes to its peer."""

    def __init__(self) -> None:
        self.peer: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _AnswersUploadsEarly(_Pass):
    """The gateway's side of a relay to CouchDB that answers ``PUT …/early.bin`` with 409
    at once and never reads its body, as CouchDB does for a revision that does not exist
    (``chttpd_db:db_attachment_req`` throws ``conflict`` before it reads the body)."""

    def __init__(self, upstream: tuple[str, int], reactor: Any) -> None:
        super().__init__()
        self.upstream, self.reactor, self.swallow = upstream, reactor, False

    def connectionMade(self) -> None:
        couch = _Pass()
        couch.peer, self.peer = self, couch
        self.reactor.connectTCP(*self.upstream, ClientFactory.forProtocol(lambda: couch))

    def dataReceived(self, data: bytes) -> None:
        if self.swallow:
            return
        if data.startswith(b"PUT ") and b"early.bin" in data.split(b"\r\n", 1)[0]:
            self.swallow = True
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(_CONFLICT) + _CONFLICT)
            return
        super().dataReceived(data)


async def test_an_upload_couchdb_answers_before_its_body_logs_no_error(
    scenario: Scenario, couch_backend: CouchBackend, reactor: Any, start_gateway: StartGateway,
) -> None:
    """The spool must not be closed under the producer still sending it (Twisted's client
    logged a critical 'read of closed file'); the producer closes it itself."""
    host, port_no = urlsplit(couch_backend.url).hostname, urlsplit(couch_backend.url).port
    sides: list[_AnswersUploadsEarly] = []
    factory = Factory()
    factory.buildProtocol = lambda addr: sides.append(  # type: ignore[method-assign]
        _AnswersUploadsEarly((host or "127.0.0.1", port_no or 5984), reactor)) or sides[-1]
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    errors: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    try:
        gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{listening.getHost().port}")
        base, rev = await _doc(scenario)
        auth = basic(scenario.member.name, scenario.member.password)
        assert (await gateway.as_user(scenario.member).get(base)).status == 200
        globalLogPublisher.addObserver(observe)
        raw = await _connect(gateway.url)
        payload = os.urandom(8 << 20)
        raw.transport.write(_chunked_head(f"{base}/attachments/early.bin?rev={rev}", auth))
        for start in range(0, len(payload), 1 << 20):
            raw.transport.write(_chunk(payload[start:start + (1 << 20)]))
        raw.transport.write(b"0\r\n\r\n")
        await _until(lambda: b"HTTP/1.1 409" in raw.data and raw.data.endswith(b"}"), 30, raw)
        await _until(lambda: gateway.app.in_flight.count == 0)
        await task.deferLater(reactor, 0.5, lambda: None)
        raw.transport.loseConnection()
    finally:
        globalLogPublisher.removeObserver(observe)
        for side in sides:
            if side.transport is not None:
                side.transport.abortConnection()
        await listening.stopListening()
    assert not errors, [str(e.get("log_failure") or e.get("log_format")) for e in errors]


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _spooled_bytes() -> int:
    """Bytes in the deleted files this process holds open (spooled bodies)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)"):
                total += os.fstat(int(fd)).st_size
        except OSError:
            continue
    return total


async def test_declared_length_over_the_cap_is_413_before_the_body(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(max_body_bytes=2_000, max_attachment_bytes=50_000)
    path = "/api/v1/db/anydb/docs/d/attachments/a?rev=1-x"
    waiting = await _connect(gateway.url)
    waiting.transport.write(_put_head(path, 10**9, {"Expect": "100-continue"}))
    await _until(lambda: b"HTTP/1.1 413" in waiting.data)
    await waiting.closed  # no body is awaited: the connection is closed
    assert b"100 Continue" not in waiting.data
    assert b"\r\nconnection: close\r\n" in waiting.data.lower()
    eager = await _connect(gateway.url)
    eager.transport.write(_put_head(path, 60_000, {}))
    await _until(lambda: b"HTTP/1.1 413" in eager.data)
    eager.transport.loseConnection()


def _open_deleted_files() -> int:
    """Files this process holds open that are deleted (spooled bodies are such files)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")
        except OSError:
            continue
    return count


def _access_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["access"] for e in events if isinstance(e.get("access"), dict)]


async def test_client_abort_mid_upload_stores_nothing(scenario: Scenario) -> None:
    """Nothing stored, the partial spool closed (not one open deleted temp file per cut
    upload), no critical log, and the access line says aborted (not a false 500)."""
    from twisted.internet import reactor
    from twisted.logger import LogLevel, capturedLogs

    client = scenario.member_client
    base, rev = await _doc(scenario)
    spools = _open_deleted_files()
    with capturedLogs() as events:
        raw = await _connect(client.base)
        auth = {k: v for k, v in client.default_headers.items() if k == "Authorization"}
        raw.transport.write(_put_head(f"{base}/attachments/cut.bin?rev={rev}", 2_000_000, auth))
        raw.transport.write(os.urandom(500_000))
        await task.deferLater(reactor, 0.5, lambda: None)
        raw.transport.abortConnection()
        await raw.closed
        await task.deferLater(reactor, 0.5, lambda: None)
    assert _open_deleted_files() <= spools
    assert not [e for e in events if e.get("log_level") in (LogLevel.critical, LogLevel.error)]
    cut = [line for line in _access_lines(events) if line["path"].endswith("/cut.bin")]
    assert len(cut) == 1 and cut[0]["aborted"] is True and cut[0]["status"] != 500, cut
    doc = await client.get(base)
    assert doc.status == 200 and doc.json["_rev"] == rev
    assert "cut.bin" not in (doc.json.get("_attachments") or {})


class _FakeCouch(Protocol):
    """Just enough CouchDB for a streamed upload, recording what reaches it.

    ``GET /`` is CouchDB's welcome (so uploads are streamed, unlike to pouchdb-server),
    ``GET /_session`` an admin, and ``PUT`` reads a ``Content-Length`` body, noting
    when its first bytes arrived, then answers 201.
    """

    log: list[tuple[str, Any]]

    def connectionMade(self) -> None:
        self.buffer = b""
        self.remaining: int | None = None
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        from twisted.internet import reactor

        self.buffer += data
        while True:
            if self.remaining is None:
                head, sep, rest = self.buffer.partition(b"\r\n\r\n")
                if not sep:
                    return
                line = head.split(b"\r\n")[0].decode()
                length = 0
                for header in head.split(b"\r\n")[1:]:
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.method, self.target = line.split(" ")[:2]
                self.buffer, self.remaining, self.received = rest, length, 0
            take = self.buffer[: self.remaining]
            self.buffer = self.buffer[len(take):]
            if take and self.received == 0:
                self.log.append(("first-bytes", reactor.seconds()))
            self.received += len(take)
            self.remaining -= len(take)
            if self.remaining:
                return
            self.remaining = None
            self._answer()

    def _answer(self) -> None:
        if self.target == "/":
            body: dict[str, Any] = {"couchdb": "Welcome"}
        elif self.target.startswith("/_session"):
            body = {"ok": True, "userCtx": {"name": "admin", "roles": ["_admin"]}}
        else:
            self.log.append(("stored", self.received))
            body = {"ok": True, "id": "doc", "rev": "2-x"}
        data = json.dumps(body).encode()
        status = b"201 Created" if self.method == "PUT" else b"200 OK"
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(data) + data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.remaining:
            self.log.append(("cut", self.received))


async def test_upload_streams_to_couchdb_and_a_slow_client_is_no_timeout(
    start_gateway: StartGateway,
) -> None:
    from twisted.internet import reactor

    log: list[tuple[str, Any]] = []
    factory = Factory.forProtocol(_FakeCouch)
    factory.protocol.log = log  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        gateway = await start_gateway(
            couchdb_url=f"http://127.0.0.1:{port.getHost().port}", request_timeout=1.0
        )
        path = "/api/v1/db/files/docs/doc/attachments/a.bin?rev=1-x"
        raw = await _connect(gateway.url)
        auth = {"Authorization": "Basic YWRtaW46eA=="}
        raw.transport.write(_put_head(path, 4 * 100_000, auth))
        started = reactor.seconds()
        for _ in range(4):  # 2 s for the body: longer than request_timeout + 0.4 s at 1 MiB/s
            raw.transport.write(b"z" * 100_000)
            await task.deferLater(reactor, 0.5, lambda: None)
        await _until(lambda: b"HTTP/1.1 201" in raw.data, raw=raw)
        assert ("stored", 400_000) in log
        first = next(at for what, at in log if what == "first-bytes" and at > started)
        assert first - started < 0.5  # upstream had bytes before the client had sent all
        raw.transport.loseConnection()

        cut = await _connect(gateway.url)
        cut.transport.write(_put_head(path, 300_000, auth) + b"z" * 100_000)
        await _until(lambda: sum(1 for what, _ in log if what == "first-bytes") >= 2)
        cut.transport.abortConnection()
        await _until(lambda: any(what == "cut" for what, _ in log))
        assert [x for x in log if x[0] == "stored"] == [("stored", 400_000)]
    finally:
        await defer.maybeDeferred(port.stopListening)


async def test_client_leaving_a_relayed_download_is_logged_as_aborted(
    start_gateway: StartGateway, db: Any, couch_backend: Any,
) -> None:
    """Through the Python relay (splice off): no critical "Unhandled Error" when the
    client goes, and its access line says aborted, not a clean 200."""
    from twisted.internet import reactor
    from twisted.logger import LogLevel, capturedLogs

    from tests.rest.conftest import basic

    gateway = await start_gateway(splice_downloads=False)
    await db.put_attachment("big", "blob.bin", os.urandom(16 << 20))
    with capturedLogs() as events:
        raw = await _connect(gateway.url)
        auth = basic(couch_backend.admin_username, couch_backend.admin_password)
        raw.transport.write(
            f"GET /api/v1/db/{db.name}/docs/big/attachments/blob.bin HTTP/1.1\r\nHost: gw\r\n"
            f"Authorization: {auth['Authorization']}\r\n\r\n".encode())
        await _until(lambda: b"HTTP/1.1 200" in raw.data)
        raw.transport.pauseProducing()  # a reader that stops reading, then leaves
        await task.deferLater(reactor, 0.5, lambda: None)
        raw.transport.abortConnection()
        await raw.closed
        await task.deferLater(reactor, 0.5, lambda: None)
    assert not [e for e in events if e.get("log_level") in (LogLevel.critical, LogLevel.error)]
    lines = [line for line in _access_lines(events) if line["path"].endswith("/blob.bin")]
    assert len(lines) == 1 and lines[0]["aborted"] is True, lines
    assert lines[0]["bytes_sent"] < 16 << 20


async def test_if_range_is_decided_here_because_couchdb_ignores_it(
    start_gateway: StartGateway, couch_backend: CouchBackend, admin: CouchServer,
    db: Database, reactor: Any,
) -> None:
    """CouchDB answers a ``Range`` with 206 whatever ``If-Range`` says (chttpd_db.erl).

    The relay in front of pouchdb-server does the same, so a gateway that passed
    ``If-Range`` on would splice bytes of the current version onto a stale copy.
    """
    relay = CouchRangeRelay(couch_backend.url, reactor)
    port = reactor.listenTCP(0, relay.site(), interface="127.0.0.1")
    try:
        gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{port.getHost().port}")
        payload = os.urandom(5000)
        await db.put_attachment("doc", "a.bin", payload, content_type="application/octet-stream")
        client = gateway.client.with_headers(
            basic(couch_backend.admin_username, couch_backend.admin_password))
        url = f"/api/v1/db/{db.name}/docs/doc/attachments/a.bin"
        etag = (await client.get(url)).header("ETag")

        plain = await client.get(url, headers={"Range": "bytes=10-19"})
        assert plain.status == 206 and plain.body == payload[10:20]
        assert relay.seen[-1].range == "bytes=10-19", "a plain range is CouchDB's to cut"

        stale = await client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"1-stale"'})
        assert stale.status == 200 and stale.body == payload
        current = await client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
        assert current.status == 206 and current.body == payload[10:20]
        assert current.header("Content-Range") == f"bytes 10-19/{len(payload)}"
        asked = [seen for seen in relay.seen if seen.path.endswith("/a.bin")][-2:]
        assert [(seen.range, seen.if_range) for seen in asked] == [(None, None)] * 2
        assert plain.header("Accept-Ranges") == "bytes"

        # An attachment CouchDB stores compressed has no ranges ("Accept-Ranges: none"):
        # neither CouchDB nor the gateway cuts one, and the gateway says so.
        relay.compressed.add(f"/{db.name}/doc/a.bin")
        whole = await client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
        assert (whole.status, whole.body) == (200, payload)
        assert whole.header("Accept-Ranges") == "none" and whole.header("Content-Range") is None
        # A 304 says nothing of ranges, as CouchDB's: a cache that takes its headers
        # into the stored answer must not learn "bytes" there.
        same = await client.get(url, headers={"If-None-Match": etag})
        assert same.status == 304 and same.header("Accept-Ranges") is None
    finally:
        await port.stopListening()
