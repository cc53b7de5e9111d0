"""gzip-coded JSON answers: only when asked for, only large ones, never the session's."""

from __future__ import annotations

import gzip
import json

import pytest
from twisted.web.test.requesthelper import DummyRequest

from gateway.http.compression import accepts_gzip, gzip_answer
from tests.conftest import CouchBackend
from tests.rest.conftest import Scenario, StartGateway, basic

GZIP = {"Accept-Encoding": "gzip, deflate, br"}


@pytest.mark.parametrize(("header", "accepted"), [
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
    ("GZIP", True),
    ("x-gzip", True),
    ("*", True),
    ("deflate, *;q=0.5", True),
    ("gzip;q=0", False),
    ("gzip;q=0.000, *", False),  # gzip named and refused: the wildcard does not bring it back
    ("*;q=0", False),
    ("deflate, br", False),
    ("identity", False),
    ("gzip;q=nonsense", False),
    ("", False),
    (None, False),
])
def test_accepts_gzip(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


def _request(accept: str | None, etag: bytes | None = None) -> DummyRequest:
    request = DummyRequest([b""])
    if accept is not None:
        request.requestHeaders.setRawHeaders(b"accept-encoding", [accept.encode()])
    request.responseHeaders.setRawHeaders(b"vary", [b"Origin"])
    if etag is not None:
        request.responseHeaders.setRawHeaders(b"etag", [etag])
    return request


def test_gzip_answer_codes_large_bodies_and_says_so() -> None:
    body = json.dumps({"rows": [{"id": f"doc{i}", "value": i} for i in range(200)]}).encode()
    request = _request("gzip", b'"1-abc"')
    coded = gzip_answer(request, body, 1400)
    assert gzip.decompress(coded) == body and len(coded) < len(body) / 3
    headers = request.responseHeaders
    assert headers.getRawHeaders(b"content-encoding") == [b"gzip"]
    assert headers.getRawHeaders(b"content-length") == [str(len(coded)).encode()]
    assert headers.getRawHeaders(b"vary") == [b"Origin, Accept-Encoding"]
    assert headers.getRawHeaders(b"etag") == [b'W/"1-abc"']  # other bytes, same content


def test_gzip_answer_leaves_small_or_unwanted_bodies_alone() -> None:
    body = b'{"ok":true}' * 200
    for accept, min_bytes, size in (("gzip", 1400, 100), (None, 1400, len(body)),
                                    ("gzip;q=0", 1, len(body))):
        request = _request(accept, b'"1-abc"')
        assert gzip_answer(request, body[:size], min_bytes) == body[:size]
        assert not request.responseHeaders.hasHeader(b"content-encoding")
        assert request.responseHeaders.getRawHeaders(b"etag") == [b'"1-abc"']
        # The answer still depends on Accept-Encoding: caches must know.
        assert request.responseHeaders.getRawHeaders(b"vary") == [b"Origin, Accept-Encoding"]
    off = _request("gzip")
    assert gzip_answer(off, body, 0) == body
    assert off.responseHeaders.getRawHeaders(b"vary") == [b"Origin"]


# -- through the gateway, against the real server --------------------------------------


async def _many_documents(scenario: Scenario) -> str:
    base = f"/api/v1/db/{scenario.db.name}"
    docs = [{"_id": f"doc{i:03}", "title": f"title {i}", "tags": ["a", "b"], "n": i}
            for i in range(120)]
    written = await scenario.member_client.post(f"{base}/bulk_docs", json_body={"docs": docs})
    assert written.status == 201
    return f"{base}/all_docs?include_docs=true"


async def test_a_large_query_answer_is_gzip_coded_when_asked(scenario: Scenario) -> None:
    client = scenario.member_client
    url = await _many_documents(scenario)
    plain = await client.get(url)
    coded = await client.get(url, headers=GZIP)

    assert plain.header("Content-Encoding") is None
    assert coded.header("Content-Encoding") == "gzip"
    assert "Accept-Encoding" in (plain.header("Vary") or "")
    assert "Accept-Encoding" in (coded.header("Vary") or "")
    assert coded.json == plain.json and len(coded.json["rows"]) == 120
    assert coded.length == coded.wire_size < plain.wire_size / 4  # Content-Length as sent
    # A coded answer's ETag is weak; revalidating with it still works.
    etag = coded.header("ETag")
    assert etag and etag.startswith("W/")
    again = await client.get(url, headers={**GZIP, "If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    assert "Accept-Encoding" in (again.header("Vary") or "")

    refused = await client.get(url, headers={"Accept-Encoding": "gzip;q=0, br"})
    assert refused.header("Content-Encoding") is None and refused.json == plain.json


async def test_small_answers_and_the_session_are_never_coded(
    start_gateway: StartGateway, scenario: Scenario, couch_backend: CouchBackend
) -> None:
    gateway = await start_gateway(compress_min_bytes=1)  # code anything that may be coded
    member = gateway.as_user(scenario.member)
    doc = f"/api/v1/db/{scenario.db.name}/docs/tiny"
    await member.put(doc, json_body={"t": 1})
    assert (await member.get(doc, headers=GZIP)).header("Content-Encoding") == "gzip"

    login = await gateway.client.post(
        "/api/v1/session", headers=GZIP,
        json_body={"name": scenario.member.name, "password": scenario.member.password})
    assert login.status == 200 and login.json["token"]
    assert login.header("Content-Encoding") is None  # a token: never next to chosen text
    session = await gateway.client.get(
        "/api/v1/session", headers={**GZIP, **basic(scenario.member.name,
                                                    scenario.member.password)})
    assert session.status == 200 and session.header("Content-Encoding") is None

    default = scenario.member_client  # compress_min_bytes 1400: a tiny document stays plain
    assert (await default.get(doc, headers=GZIP)).header("Content-Encoding") is None


async def test_compression_can_be_turned_off(
    start_gateway: StartGateway, scenario: Scenario
) -> None:
    gateway = await start_gateway(compress_min_bytes=0)
    url = await _many_documents(scenario)
    answer = await gateway.as_user(scenario.member).get(url, headers=GZIP)
    assert answer.status == 200 and answer.header("Content-Encoding") is None
    assert "Accept-Encoding" not in (answer.header("Vary") or "")
