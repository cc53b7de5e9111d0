"""Query answers over ``WALLABY_BUFFER_ANSWER_BYTES`` stream through instead of being held.

Against the real server: the streamed answers are the same JSON as the held ones, gzip
works on the fly, the client gets the first bytes while CouchDB is still sending, and an
answer that breaks off (or goes silent) cuts the client's connection instead of ending
like a complete one.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone

from tests.rest.conftest import ApiClient, Scenario, StartGateway
from tests.support.faultproxy import FaultProxy
from tests.ws.conftest import wait_until

#: The setting in these tests: every answer of the seeded database is larger.
LIMIT = 4096
GZIP = {"Accept-Encoding": "gzip"}
DDOC = {"views": {"by_kind": {"map": "function(doc) { if (doc.kind) emit(doc.kind, doc.n); }"}}}
COUNT = 150


async def _seed(scenario: Scenario) -> str:
    base = f"/api/v1/db/{scenario.db.name}"
    assert (await scenario.admin.put(f"{base}/docs/_design%2Fgrp", json_body=DDOC)).status == 201
    docs = [{"_id": f"doc{i:03}", "kind": "odd" if i % 2 else "even", "n": i, "pad": "x" * 80}
            for i in range(COUNT)]
    written = await scenario.member_client.post(f"{base}/bulk_docs", json_body={"docs": docs})
    assert written.status == 201
    return base


def _queries(base: str) -> list[tuple[str, str, Any]]:
    ids = [f"doc{i:03}" for i in range(COUNT)]
    return [
        ("GET", f"{base}/all_docs?include_docs=true", None),
        ("POST", f"{base}/all_docs?include_docs=true", {"keys": ids}),
        ("GET", f"{base}/views/grp/by_kind?include_docs=true", None),
        ("POST", f"{base}/views/grp/by_kind?include_docs=true", {"keys": ["odd", "even"]}),
        ("POST", f"{base}/find", {"selector": {"n": {"$gte": 0}}, "limit": 1000}),
        ("POST", f"{base}/bulk_get", {"docs": [{"id": i} for i in ids]}),
    ]


async def test_large_answers_stream_and_match_the_held_ones(
    start_gateway: StartGateway, scenario: Scenario
) -> None:
    base = await _seed(scenario)
    streaming = (await start_gateway(buffer_answer_bytes=LIMIT)).as_user(scenario.member)
    held_whole = scenario.member_client  # the default, 4 MiB: these answers are held
    for method, url, body in _queries(base):
        streamed = await streaming.request(method, url, json_body=body)
        held = await held_whole.request(method, url, json_body=body)
        assert streamed.status == held.status == 200, url
        assert json.loads(streamed.body) == json.loads(held.body), url
        assert len(streamed.body) > LIMIT
        # Held: a known length. Streamed: chunked, as CouchDB sent it.
        assert held.length == len(held.body) and streamed.length is None, url
        assert streamed.header("Content-Type") == "application/json"
        if method == "GET":  # revalidatable routes: the browser must still ask again
            assert streamed.header("Cache-Control") == held.header("Cache-Control")

    small = await streaming.get(f"{base}/all_docs?limit=1")
    assert small.status == 200 and small.length == len(small.body)  # under the limit: held


async def test_a_streamed_answer_is_gzip_coded_on_the_fly(
    start_gateway: StartGateway, scenario: Scenario
) -> None:
    base = await _seed(scenario)
    url = f"{base}/all_docs?include_docs=true"
    streaming = (await start_gateway(buffer_answer_bytes=LIMIT)).as_user(scenario.member)
    plain = await streaming.get(url)
    coded = await streaming.get(url, headers=GZIP)
    assert coded.header("Content-Encoding") == "gzip" and coded.length is None
    assert "Accept-Encoding" in (coded.header("Vary") or "")
    assert coded.json == plain.json and len(coded.json["rows"]) == COUNT + 1  # + the ddoc
    assert coded.wire_size < len(coded.body) / 4
    assert plain.header("Content-Encoding") is None

    never = (await start_gateway(buffer_answer_bytes=LIMIT, compress_min_bytes=0)).as_user(
        scenario.member)
    off = await never.get(url, headers=GZIP)
    assert off.header("Content-Encoding") is None and off.json == plain.json


class _Collect(Protocol):
    """Collects a response body and how it ended."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reason: Failure | None = None
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason or Failure(ResponseDone())
        self.ended.callback(None)


async def _stalled_midway(
    reactor: Any, client: ApiClient, proxy: FaultProxy, url: str
) -> tuple[_Collect, int]:
    """Start a large answer whose upstream stops after a few times the limit."""
    whole = await client.get(url)  # also checks the user once, so no upstream call is left
    assert whole.status == 200 and len(whole.body) > 8 * LIMIT
    proxy.stall_after(3 * LIMIT)
    opening: Deferred[Any] = Deferred.fromCoroutine(client.open("GET", url))
    opening.addTimeout(10, reactor)  # held whole, no header would ever come
    response = await opening
    assert response.code == 200
    body = _Collect()
    response.deliverBody(body)
    await wait_until(reactor, lambda: len(body.data) > LIMIT, 10.0)
    assert len(body.data) < len(whole.body)  # the rest is still upstream
    return body, len(whole.body)


async def test_the_client_gets_a_large_answer_while_couchdb_still_sends_it(
    start_gateway: StartGateway, scenario: Scenario, proxy: FaultProxy, reactor: Any
) -> None:
    base = await _seed(scenario)
    gateway = await start_gateway(couchdb_url=proxy.url, buffer_answer_bytes=LIMIT)
    body, _size = await _stalled_midway(
        reactor, gateway.as_user(scenario.member), proxy, f"{base}/all_docs?include_docs=true")
    assert not body.ended.called
    proxy.reset_all()  # CouchDB dies midway: the client must not see a complete answer
    ending = body.ended
    ending.addTimeout(10, reactor)
    await ending
    assert body.reason is not None and not body.reason.check(ResponseDone), body.reason


async def test_a_streamed_answer_that_goes_silent_is_cut_after_the_timeout(
    start_gateway: StartGateway, scenario: Scenario, proxy: FaultProxy, reactor: Any
) -> None:
    base = await _seed(scenario)
    gateway = await start_gateway(
        couchdb_url=proxy.url, buffer_answer_bytes=LIMIT, request_timeout=1.0)
    body, _size = await _stalled_midway(
        reactor, gateway.as_user(scenario.member), proxy, f"{base}/all_docs?include_docs=true")
    started = time.monotonic()
    ending = body.ended
    ending.addTimeout(10, reactor)
    await ending
    assert body.reason is not None and not body.reason.check(ResponseDone), body.reason
    assert 0.5 < time.monotonic() - started < 5
    metrics = (await gateway.client.get("/metrics")).body.decode()
    assert 'wallaby_errors_total{route="allDocs",error="upstream_timeout"} 1' in metrics


async def test_a_large_document_streams_and_keeps_only_a_revision_as_its_etag(
    start_gateway: StartGateway, scenario: Scenario
) -> None:
    base = f"/api/v1/db/{scenario.db.name}/docs"
    text = "lorem ipsum " * 2000
    written = await scenario.member_client.put(f"{base}/big", json_body={"text": text})
    assert written.status == 201
    rev = written.json["rev"]
    attachment = await scenario.member_client.put(
        f"{base}/big/attachments/note.txt?rev={rev}", data=b"x" * 20000,
        headers={"Content-Type": "text/plain"})
    assert attachment.status == 201
    rev = attachment.json["rev"]
    streaming = (await start_gateway(buffer_answer_bytes=LIMIT)).as_user(scenario.member)
    for url in (f"{base}/big", f"{base}/big?attachments=true"):
        streamed = await streaming.get(url)
        held = await scenario.member_client.get(url)
        assert streamed.status == held.status == 200 and streamed.length is None, url
        assert streamed.json == held.json and streamed.json["_rev"] == rev
        # Held: the revision, from the body. Streamed: the upstream's tag only if it is
        # that revision (CouchDB's); pouchdb-server's hash of the body is dropped.
        assert held.header("ETag") == f'"{rev}"'
        assert streamed.header("ETag") in (None, f'"{rev}"'), streamed.header("ETag")

    # A HEAD has its streamed GET's headers: no length, and no tag but CouchDB's revision.
    get = await streaming.get(f"{base}/big")
    head = await streaming.request("HEAD", f"{base}/big")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") is None
    assert head.header("ETag") == get.header("ETag") and head.header("ETag") in (None, f'"{rev}"')
    held = await scenario.member_client.get(f"{base}/big")
    small = await scenario.member_client.request("HEAD", f"{base}/big")  # held: both known
    assert small.header("Content-Length") == str(len(held.body))
    assert small.header("ETag") == f'"{rev}"'


async def test_a_head_of_a_large_answer_reads_no_more_of_it_than_a_get(
    start_gateway: StartGateway, scenario: Scenario, proxy: FaultProxy, reactor: Any
) -> None:
    base = await _seed(scenario)
    gateway = await start_gateway(couchdb_url=proxy.url, buffer_answer_bytes=LIMIT)
    client = gateway.as_user(scenario.member)
    url = f"{base}/all_docs?include_docs=true"
    assert (await client.get(url)).status == 200  # checks the user once, before the stall
    proxy.stall_after(3 * LIMIT)
    heading: Deferred[Any] = Deferred.fromCoroutine(client.request("HEAD", url, headers=GZIP))
    heading.addTimeout(10, reactor)  # read whole, it would wait for the stalled rest
    head = await heading
    assert head.status == 200 and head.body == b"" and head.header("Content-Length") is None

    def stalled_links() -> list[Any]:
        return [side for side in proxy.connections if side.peer is not None and side.peer.held]

    await wait_until(reactor, lambda: not stalled_links(), 10.0)  # the gateway dropped the rest
    proxy.resume()
    get = await client.get(url, headers=GZIP)  # on a fresh connection, not the dropped one
    assert get.status == 200 and len(get.json["rows"]) == COUNT + 1  # and the design doc
    for name in ("Content-Type", "Content-Encoding", "Vary", "Cache-Control", "ETag"):
        assert head.header(name) == get.header(name), name
    metrics = (await gateway.client.get("/metrics")).body.decode()
    assert "wallaby_errors_total{" not in metrics  # dropping the rest is no upstream error
    assert 'route="allDocs",method="HEAD",status="200"} 1' in metrics
