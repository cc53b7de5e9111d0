"""Conditional GETs of documents, views and ``_all_docs``: ``ETag``, ``If-None-Match``, 304."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from gateway.couch.transport import CouchResponse, CouchTransport
from gateway.http.conditional import REVALIDATE, content_etag, etag_matches
from tests.rest.conftest import Scenario

# -- the comparison (RFC 9110 13.1.2: weak comparison for If-None-Match) ---------------


@pytest.mark.parametrize(("header", "etag", "matches"), [
    ('"1-abc"', '"1-abc"', True),
    ('W/"1-abc"', '"1-abc"', True),
    ('"1-abc"', 'W/"1-abc"', True),
    ('"0-x", "1-abc"', '"1-abc"', True),
    ('"0-x",W/"1-abc"', '"1-abc"', True),
    ("*", '"1-abc"', True),
    (' * ', '"anything"', True),
    ('"1-abd"', '"1-abc"', False),
    ('"1-abc', '"1-abc"', False),  # unterminated: no tag at all
    ('1-abc', '"1-abc"', False),  # unquoted is not an entity tag
    ('"a,b"', '"a,b"', True),  # a comma inside the quotes belongs to the tag
    ('"a", "b"', '"a,b"', False),
    ("", '"1-abc"', False),
    (None, '"1-abc"', False),
    ('"1-abc"', None, False),
    ("*", None, False),  # nothing current to match
])
def test_etag_matches(header: str | None, etag: str | None, matches: bool) -> None:
    assert etag_matches(header, etag) is matches


def test_content_etag_names_exactly_the_bytes() -> None:
    tag = content_etag(b'{"rows":[]}')
    assert tag.startswith('"') and tag.endswith('"') and len(tag) == 34
    assert tag == content_etag(b'{"rows":[]}')
    assert tag != content_etag(b'{"rows":[] }')
    assert etag_matches(tag, tag) and not etag_matches(tag, content_etag(b""))


# -- against the real server ------------------------------------------------------------


AnswerHook = Callable[[str, dict[str, Any], CouchResponse], None]


def _after_each_send(monkeypatch: pytest.MonkeyPatch, hook: AnswerHook) -> None:
    """Call ``hook(method, kwargs, answer)`` on every JSON answer from CouchDB."""
    original = CouchTransport.send

    async def hooked(self: CouchTransport, method: str, segments: Any, **kwargs: Any
                     ) -> CouchResponse:
        answer = await original(self, method, segments, **kwargs)
        hook(method, kwargs, answer)
        return answer

    monkeypatch.setattr(CouchTransport, "send", hooked)


def _spy_on_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, str | bytes], int]]:
    """Record what the gateway asked CouchDB (method, extra headers) and its status."""
    seen: list[tuple[str, dict[str, str | bytes], int]] = []
    _after_each_send(monkeypatch, lambda method, kwargs, answer: seen.append(
        (method, dict(kwargs.get("headers") or {}), answer.status)))
    return seen


async def test_the_etag_of_a_read_is_what_if_match_takes(scenario: Scenario) -> None:
    """GET, then PUT and DELETE with ``If-Match: <the ETag>``: the browser's edit flow."""
    client, db = scenario.member_client, scenario.db.name
    url = f"/api/v1/db/{db}/docs/flow"
    made = await client.put(url, json_body={"v": 1})
    assert made.header("ETag") == f'"{made.json["rev"]}"'
    read = await client.get(url)
    edited = await client.put(url, json_body={"v": 2}, headers={"If-Match": read.header("ETag")})
    assert edited.status == 201, edited.body
    assert edited.header("ETag") == f'"{edited.json["rev"]}"'
    stale = await client.put(url, json_body={"v": 3}, headers={"If-Match": read.header("ETag")})
    assert stale.status == 409
    anything = await client.put(url, json_body={"v": 3}, headers={"If-Match": "*"})
    assert anything.status == 400 and "If-Match" in anything.json["reason"]
    current = (await client.get(url)).header("ETag")
    gone = await client.delete(url, headers={"If-Match": current})
    assert gone.status == 200 and gone.header("ETag") == f'"{gone.json["rev"]}"'
    posted = await client.post(f"/api/v1/db/{db}/docs", json_body={"v": 1})
    assert posted.header("ETag") == f'"{posted.json["rev"]}"'
    # With meta members (conflicts …) the body can change while the revision stays:
    # CouchDB sends no revision tag then, and neither does the gateway.
    meta = await client.get(f"/api/v1/db/{db}/docs/{posted.json['id']}?conflicts=true")
    assert meta.status == 200 and meta.header("ETag") != f'"{posted.json["rev"]}"'


async def test_a_revision_that_cannot_be_an_entity_tag_gives_none(scenario: Scenario) -> None:
    """With new_edits=false a writer can store any revision string; reading it must not
    break (it was a 500 for every reader) nor make a malformed or injected header."""
    client, db = scenario.member_client, scenario.db.name
    odd = {"snowman": "1-\u2603", "quote": '1-a"b', "crlf": "1-abc\r\nX-Injected: yes"}
    stored = await client.post(f"/api/v1/db/{db}/bulk_docs", json_body={
        "new_edits": False, "docs": [{"_id": name, "_rev": rev} for name, rev in odd.items()]})
    assert stored.status == 201, stored.body
    for name, rev in odd.items():
        read = await client.get(f"/api/v1/db/{db}/docs/{name}")
        assert read.status == 200 and read.json["_rev"] == rev, (name, read.body)
        etag = read.header("ETag")  # none of the revision's: at most one of the bytes
        assert etag is None or re.fullmatch(r'(W/)?"[\x21\x23-\x7e]*"', etag), (name, etag)
        assert etag != f'"{rev}"' and read.header("X-Injected") is None, (name, etag)


async def test_a_document_is_revalidated_by_its_etag(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = scenario.member_client
    url = f"/api/v1/db/{scenario.db.name}/docs/note"
    first = (await client.put(url, json_body={"text": "v1"})).json["rev"]

    fresh = await client.get(url)
    etag = fresh.header("ETag")
    assert fresh.status == 200 and fresh.json["text"] == "v1"
    assert etag == f'"{first}"'  # CouchDB's: the document's revision (on any server)
    assert fresh.header("Cache-Control") == REVALIDATE  # keep it, but ask again

    sends = _spy_on_sends(monkeypatch)
    same = await client.get(url, headers={"If-None-Match": etag})
    assert same.status == 304 and same.body == b""
    assert same.header("ETag") == etag
    assert same.header("Cache-Control") == REVALIDATE
    # CouchDB saw the condition (and may have answered 304 itself).
    # The client's bytes, relayed as they came.
    assert sends[-1][0] == "GET" and sends[-1][1] == {"If-None-Match": etag.encode()}
    assert sends[-1][2] in (200, 304), sends

    for header in (f"W/{etag}", f'"0-other", {etag}', "*"):
        assert (await client.get(url, headers={"If-None-Match": header})).status == 304

    other = await client.get(url, headers={"If-None-Match": '"0-other"'})
    assert other.status == 200 and other.json["text"] == "v1"

    await client.put(url, json_body={"_rev": first, "text": "v2"})
    changed = await client.get(url, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.json["text"] == "v2"
    assert changed.header("ETag") not in (None, etag)


async def test_a_matching_etag_never_lets_an_outsider_in(scenario: Scenario) -> None:
    url = f"/api/v1/db/{scenario.db.name}/docs/secret"
    await scenario.member_client.put(url, json_body={"text": "members only"})
    etag = (await scenario.member_client.get(url)).header("ETag")
    assert etag

    for header in (etag, "*"):
        refused = await scenario.outsider_client.get(url, headers={"If-None-Match": header})
        assert refused.status in (401, 403), refused.status
        assert refused.json["error"] in ("unauthorized", "forbidden")
        assert refused.header("ETag") is None and b"members only" not in refused.body


def _strip_upstream_etags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answer as CouchDB 2+ does for views and ``_all_docs``: with no ``ETag``."""
    _after_each_send(monkeypatch, lambda _method, _kwargs, answer: answer.headers.removeHeader(
        b"etag"))


@pytest.mark.parametrize("upstream_etags", ["as sent", "none, as CouchDB 3 for views"])
async def test_a_view_and_all_docs_are_revalidated(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, upstream_etags: str
) -> None:
    client, admin = scenario.member_client, scenario.admin
    base = f"/api/v1/db/{scenario.db.name}"
    await admin.put(f"{base}/docs/_design%2Fnotes", json_body={"views": {"by_text": {
        "map": "function (doc) { if (doc.text) emit(doc.text, null); }"}}})
    await client.put(f"{base}/docs/a", json_body={"text": "a"})
    if upstream_etags != "as sent":
        _strip_upstream_etags(monkeypatch)

    for url in (f"{base}/views/notes/by_text", f"{base}/all_docs"):
        fresh = await client.get(url)
        etag = fresh.header("ETag")
        assert fresh.status == 200 and etag, url
        assert fresh.header("Cache-Control") == REVALIDATE
        if upstream_etags != "as sent":
            assert etag == content_etag(fresh.body)  # made by the gateway from the bytes
        same = await client.get(url, headers={"If-None-Match": etag})
        assert same.status == 304 and same.body == b"", url
        assert same.header("ETag") == etag

    before = {url: (await client.get(url)).header("ETag")
              for url in (f"{base}/views/notes/by_text", f"{base}/all_docs")}
    await client.put(f"{base}/docs/b", json_body={"text": "b"})
    for url, etag in before.items():
        changed = await client.get(url, headers={"If-None-Match": etag})
        assert changed.status == 200, url
        assert "b" in [row["id"] for row in changed.json["rows"]], url


async def test_posted_queries_are_not_conditional(scenario: Scenario) -> None:
    client = scenario.member_client
    base = f"/api/v1/db/{scenario.db.name}"
    await client.put(f"{base}/docs/a", json_body={"text": "a"})
    answer = await client.post(f"{base}/all_docs", json_body={"keys": ["a"]},
                               headers={"If-None-Match": "*"})
    assert answer.status == 200 and answer.json["rows"][0]["id"] == "a"
    assert answer.header("Cache-Control") == "no-store"


async def test_head_answers_a_documents_headers_without_its_body(scenario: Scenario) -> None:
    client = scenario.member_client
    url = f"/api/v1/db/{scenario.db.name}/docs/headed"
    await client.put(url, json_body={"text": "some text"})
    full = await client.get(url)

    head = await client.request("HEAD", url)
    assert head.status == 200 and head.body == b""
    assert head.header("ETag") == full.header("ETag")
    assert head.header("Content-Length") == str(len(full.body))
    same = await client.request("HEAD", url, headers={"If-None-Match": full.header("ETag")})
    assert same.status == 304
    missing = await client.request("HEAD", f"/api/v1/db/{scenario.db.name}/docs/nothing")
    assert missing.status == 404 and missing.body == b""
    refused = await scenario.outsider_client.request("HEAD", url)
    assert refused.status in (401, 403) and refused.header("ETag") is None
