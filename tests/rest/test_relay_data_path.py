"""The REST relay's data path at its edges: tag forms, thresholds, ``Vary``, CouchDB's
own 304, ``Location``, query values and inline attachment data."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from twisted.web.http import Request
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from gateway.couch.transport import CouchResponse, CouchTransport
from gateway.http.compression import gzip_answer, gzip_stream
from gateway.http.conditional import REVALIDATE, content_etag
from gateway.http.request_args import raw_header
from tests.rest.conftest import Scenario
from tests.rest.test_conditional import _after_each_send as after_each_send


async def test_a_couchdb_etag_of_a_revision_that_cannot_be_a_tag_is_dropped(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CouchDB tags a document with ``"<rev>"`` whatever the revision (pouchdb-server with a
    hash of the body): a revision that cannot be an entity tag must give no ETag at all,
    not CouchDB's malformed one (at most the gateway's own, made from the bytes)."""
    client, db = scenario.member_client, scenario.db.name
    odd = {"snowman": "1-\u2603", "quote": '1-a"b', "space": "1-a b"}
    stored = await client.post(f"/api/v1/db/{db}/bulk_docs", json_body={
        "new_edits": False, "docs": [{"_id": name, "_rev": rev} for name, rev in odd.items()]})
    assert stored.status == 201, stored.body

    def as_couchdb(_method: str, _kwargs: dict[str, Any], answer: CouchResponse) -> None:
        rev = answer.body.get("_rev") if isinstance(answer.body, dict) else None
        if isinstance(rev, str):
            answer.headers.setRawHeaders(b"etag", [f'"{rev}"'.encode()])

    after_each_send(monkeypatch, as_couchdb)
    for name, rev in odd.items():
        read = await client.get(f"/api/v1/db/{db}/docs/{name}")
        assert read.status == 200 and read.json["_rev"] == rev, (name, read.body)
        etag = read.header("ETag")  # none of CouchDB's; at most one made from the bytes
        assert etag is None or etag == content_etag(read.body), (name, etag)


def test_a_body_of_exactly_compress_min_bytes_is_coded() -> None:
    """``WALLABY_COMPRESS_MIN_BYTES``: answers "of at least" that many bytes are coded."""
    body = b'{"rows":[' + b'{"id":"doc","value":1},' * 80 + b'{}]}'
    for size, coded in ((len(body), True), (len(body) + 1, False)):
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip"])
        out = gzip_answer(request, body, size)
        assert (request.responseHeaders.getRawHeaders(b"content-encoding") == [b"gzip"]) is coded
        assert (gzip.decompress(out) if coded else out) == body


def test_vary_names_accept_encoding_once_whatever_its_case() -> None:
    """A ``Vary`` that already names the field (in any case) is left as it is."""
    for present in (b"Origin, Accept-Encoding", b"origin, accept-encoding"):
        for code in (lambda r: gzip_answer(r, b"x" * 2000, 1400),
                     lambda r: gzip_stream(r, 1400)):
            request = DummyRequest([b""])
            request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip"])
            request.responseHeaders.setRawHeaders(b"vary", [present])
            code(request)
            assert request.responseHeaders.getRawHeaders(b"vary") == [present]


def _couchdb_answers_304(monkeypatch: pytest.MonkeyPatch, headers: Headers) -> None:
    """From now on CouchDB answers every request with ``If-None-Match`` 304 itself, with
    ``headers``."""
    original = CouchTransport.send

    async def couch_says_304(self: CouchTransport, method: str, segments: Any,
                             **kwargs: Any) -> CouchResponse:
        if "If-None-Match" in (kwargs.get("headers") or {}):
            return CouchResponse(304, headers, None, None)
        return await original(self, method, segments, **kwargs)

    monkeypatch.setattr(CouchTransport, "send", couch_says_304)


async def test_couchdbs_own_304_is_answered_304_even_without_a_tag(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CouchDB's 304 (the document unchanged) is the gateway's 304: no body headers, the
    caching policy, whatever tag CouchDB repeated (here none)."""
    client = scenario.member_client
    url = f"/api/v1/db/{scenario.db.name}/docs/kept"
    await client.put(url, json_body={"v": 1})
    _couchdb_answers_304(monkeypatch, Headers())
    same = await client.get(url, headers={"If-None-Match": '"1-whatever"'})
    assert same.status == 304 and same.body == b""
    assert same.header("Content-Type") is None and same.header("Content-Length") is None
    assert same.header("Cache-Control") == REVALIDATE


async def test_couchdbs_own_304_carries_the_tag_in_the_form_of_the_clients_copy(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CouchDB answered 304 itself, so the size of the 200 is unknown: the tag goes weak
    when the client's copy had it weak (it came gzip-coded) and the client still takes
    gzip; strong otherwise, so that the copy the client holds is the one freshened."""
    client = scenario.member_client
    url = f"/api/v1/db/{scenario.db.name}/docs/kept"
    await client.put(url, json_body={"v": 1})
    rev = (await client.get(url)).json["_rev"]
    _couchdb_answers_304(monkeypatch, Headers({b"ETag": [f'"{rev}"'.encode()]}))
    for sent, encoding, expected in (
        (f'W/"{rev}"', "gzip", f'W/"{rev}"'),
        (f'"{rev}"', "gzip", f'"{rev}"'),
        (f'W/"{rev}"', "identity", f'"{rev}"'),
        (f'"other", W/"{rev}"', "gzip, deflate", f'W/"{rev}"'),
    ):
        same = await client.get(url, headers={"If-None-Match": sent, "Accept-Encoding": encoding})
        assert same.status == 304 and same.header("ETag") == expected, (sent, encoding)


async def test_a_streamed_document_keeps_couchdbs_revision_etag(
    start_gateway: Any, scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document answer too large to hold streams with CouchDB's ``ETag`` (its revision),
    so the browser can still send it back in ``If-Match`` / ``If-None-Match``."""
    base = f"/api/v1/db/{scenario.db.name}/docs"
    written = await scenario.member_client.put(f"{base}/big", json_body={"t": "lorem " * 4000})
    rev = written.json["rev"]

    def as_couchdb(_method: str, _kwargs: dict[str, Any], answer: CouchResponse) -> None:
        if answer.spilled is not None:  # CouchDB tags a document with its revision
            answer.headers.setRawHeaders(b"etag", [f'"{rev}"'.encode()])

    after_each_send(monkeypatch, as_couchdb)
    streaming = (await start_gateway(buffer_answer_bytes=4096)).as_user(scenario.member)
    streamed = await streaming.get(f"{base}/big")
    assert streamed.status == 200 and streamed.length is None  # streamed, not held
    assert streamed.json["_rev"] == rev
    assert streamed.header("ETag") == f'"{rev}"'
    coded = await streaming.get(f"{base}/big", headers={"Accept-Encoding": "gzip"})
    assert coded.header("Content-Encoding") == "gzip" and coded.header("ETag") == f'W/"{rev}"'


async def test_couchdbs_batch_answer_names_no_location(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CouchDB answers ``batch=ok`` with 202 ``{"ok", "id"}`` and no revision: nothing is
    written yet, so no ``Location`` (pouchdb-server writes at once, so the existing test
    only ever takes its other branch)."""
    original = CouchTransport.send

    async def as_couchdb(self: CouchTransport, method: str, segments: Any,
                         **kwargs: Any) -> CouchResponse:
        answer = await original(self, method, segments, **kwargs)
        if (kwargs.get("params") or {}).get("batch") == "ok" and isinstance(answer.body, dict):
            body = {"ok": True, "id": answer.body["id"]}
            return CouchResponse(202, answer.headers, body, None)
        return answer

    monkeypatch.setattr(CouchTransport, "send", as_couchdb)
    made = await scenario.member_client.post(
        f"/api/v1/db/{scenario.db.name}/docs?batch=ok", json_body={"n": 1})
    assert made.status == 202 and "rev" not in made.json, made.body
    assert made.header("Location") is None


def test_raw_header_relays_the_value_get_header_judges() -> None:
    """``raw_header`` and ``getHeader`` read the same line of a repeated header (the last),
    so what is relayed upstream is what the gateway itself compared."""
    request = Request(DummyChannel())  # Twisted's own getHeader (DummyRequest's differs)
    request.requestHeaders.setRawHeaders(b"if-none-match", [b'"1-a"', b'"2-b"'])
    assert raw_header(request, b"if-none-match") == request.getHeader("if-none-match").encode()


async def test_an_empty_json_query_parameter_is_refused_not_dropped(scenario: Scenario) -> None:
    """``?key=`` is a key that is not JSON (CouchDB: 400), not "no key": dropping blank
    values would answer every row instead of none asked for."""
    base = f"/api/v1/db/{scenario.db.name}"
    await scenario.member_client.put(f"{base}/docs/a", json_body={"v": 1})
    answer = await scenario.member_client.get(f"{base}/all_docs?key=")
    assert answer.status == 400, answer.body


async def test_a_json_body_of_exactly_max_body_bytes_is_taken(
    start_gateway: Any, scenario: Scenario
) -> None:
    """``max_body_bytes`` is the largest body accepted (413 only beyond)."""
    gateway = await start_gateway(max_body_bytes=2000)
    member = gateway.as_user(scenario.member)
    url = f"/api/v1/db/{scenario.db.name}/docs/sized"
    skeleton = len(json.dumps({"pad": ""}, separators=(",", ":")).encode())
    for size, status in ((2000, 201), (2001, 413)):
        body = json.dumps({"pad": "x" * (size - skeleton)}, separators=(",", ":")).encode()
        assert len(body) == size
        answer = await member.request("PUT", url, data=body,
                                      headers={"Content-Type": "application/json"})
        assert answer.status == status, (size, answer.body)
        if status == 201:
            await member.delete(f"{url}?rev={answer.json['rev']}")


async def test_inline_data_with_characters_outside_base64_is_refused(scenario: Scenario) -> None:
    """CouchDB decodes inline data strictly (Erlang ``base64:decode``: only whitespace is
    skipped) and answers 400 for any other character; a lenient decoder would drop it and
    store other bytes than CouchDB would have refused."""
    base = f"/api/v1/db/{scenario.db.name}/docs"
    for data in ("aG$k=", "aGk=!", "a-Gk="):
        entry = {"content_type": "text/plain", "data": data}
        refused = await scenario.member_client.put(f"{base}/bad", json_body={
            "_attachments": {"a": entry}})
        assert refused.status == 400, (data, refused.status, refused.body)

