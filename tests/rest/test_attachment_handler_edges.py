"""Attachment handlers at their edges: ranges of an old revision, the size cap, the
default Content-Type, a Content-MD5 that is not base64."""

from __future__ import annotations

from tests.rest.conftest import Scenario


async def _attachment(scenario: Scenario, body: bytes = b"0123456789abcdef") -> tuple[str, str]:
    base = f"/api/v1/db/{scenario.db.name}/docs/holder"
    made = await scenario.admin.put(base, json_body={"n": 1})
    assert made.status == 201, made.json
    url = f"{base}/attachments/a.bin"
    up = await scenario.admin.put(f"{url}?rev={made.json['rev']}", data=body,
                                  headers={"Content-Type": "application/x-thing"})
    assert up.status == 201, up.json
    return url, up.json["rev"]


async def test_a_weak_if_none_match_of_the_etag_is_a_304(scenario: Scenario) -> None:
    """RFC 9110 13.1.2: If-None-Match compares weakly, so ``W/"tag"`` matches ``"tag"``.

    Guards against: Attachments.download no longer turns an upstream 200 into a 304 when the
    client's tag matches (the upstream compares strongly)."""
    url, _ = await _attachment(scenario)
    first = await scenario.admin.get(url)
    etag = first.header("ETag")
    assert first.status == 200 and etag, first.headers
    for presented in (etag, f"W/{etag}", f'"nope", W/{etag}'):
        again = await scenario.admin.get(url, headers={"If-None-Match": presented})
        assert again.status == 304, (presented, again.status)
        assert again.body == b""


async def test_a_matching_if_none_match_is_a_304_for_head_and_ranges(scenario: Scenario) -> None:
    """RFC 9110 13.2.2: If-None-Match is evaluated before Range/If-Range; a match is a 304
    for GET and HEAD alike. (Guards against: no 304 made by the gateway when upstream sends 200.)"""
    url, _ = await _attachment(scenario)
    etag = (await scenario.admin.get(url)).header("ETag")
    cases = [
        ("HEAD", {"If-None-Match": etag}),
        ("GET", {"If-None-Match": etag, "Range": "bytes=0-3"}),
        ("GET", {"If-None-Match": etag, "Range": "bytes=0-3", "If-Range": etag}),
        ("GET", {"If-None-Match": "*"}),
    ]
    for method, headers in cases:
        reply = await scenario.admin.request(method, url, headers=headers)
        assert reply.status == 304, (method, headers, reply.status, reply.headers)


async def test_an_attachment_of_exactly_the_cap_is_taken(scenario: Scenario, start_gateway) -> None:
    """WALLABY_MAX_ATTACHMENT_BYTES is the largest size taken (docs: "over" it is 413).

    Guards against: ``declared >= max_attachment_bytes`` refuses an upload of exactly the cap."""
    gateway = await start_gateway(max_attachment_bytes=50_000)
    client = gateway.as_user(scenario.member)
    base = f"/api/v1/db/{scenario.db.name}/docs/capped"
    made = await client.put(base, json_body={"n": 1})
    assert made.status == 201, made.json
    exact = await client.put(f"{base}/attachments/exact.bin?rev={made.json['rev']}",
                             data=b"e" * 50_000, headers={"Content-Type": "application/x-e"})
    assert exact.status == 201, (exact.status, exact.json)
    over = await client.put(f"{base}/attachments/over.bin?rev={exact.json['rev']}",
                            data=b"o" * 50_001, headers={"Content-Type": "application/x-e"})
    assert over.status == 413, (over.status, over.json)


async def test_a_range_of_an_older_revision_is_cut_from_that_revision(scenario: Scenario) -> None:
    """``?rev=`` with ``Range``: the length (and the cut) come from that revision's stub.

    Guards against: Attachments._stub_length reads the current revision's stub (drops ``rev``);
    its digest then names other bytes, the length is unknown and the Range ignored."""
    url, rev2 = await _attachment(scenario, b"OLD-content-0123")
    base = url.rsplit("/attachments/", 1)[0]
    newer = await scenario.admin.put(f"{url}?rev={rev2}", data=b"NEW-and-longer-content",
                                     headers={"Content-Type": "application/x-thing"})
    assert newer.status == 201, newer.json
    assert (await scenario.admin.get(base)).json["_rev"] != rev2
    cut = await scenario.admin.get(f"{url}?rev={rev2}", headers={"Range": "bytes=0-3"})
    assert cut.status == 206, (cut.status, cut.body[:40])
    assert cut.body == b"OLD-", cut.body
    assert cut.header("Content-Range") == "bytes 0-3/16", cut.headers
    whole = await scenario.admin.get(f"{url}?rev={rev2}")
    assert whole.status == 200 and whole.body == b"OLD-content-0123"
    assert whole.length == 16, whole.length


async def test_an_upload_without_content_type_is_stored_as_octet_stream(scenario: Scenario) -> None:
    """RFC 9110 8.3: with no Content-Type the recipient may assume application/octet-stream;
    the gateway sends that upstream. Guards against: another default (text/plain) is stored."""
    base = f"/api/v1/db/{scenario.db.name}/docs/typeless"
    made = await scenario.admin.put(base, json_body={"n": 1})
    up = await scenario.admin.put(f"{base}/attachments/blob?rev={made.json['rev']}",
                                  data=b"\x00\x01binary")
    assert up.status == 201, up.json
    down = await scenario.admin.get(f"{base}/attachments/blob")
    assert down.status == 200 and down.body == b"\x00\x01binary"
    assert down.header("Content-Type") == "application/octet-stream", down.headers
    stub = (await scenario.admin.get(base)).json["_attachments"]["blob"]
    assert stub["content_type"] == "application/octet-stream", stub


async def test_a_content_md5_with_characters_outside_base64_is_refused(scenario: Scenario) -> None:
    """RFC 1864: Content-MD5 is the base64 of the digest. A value with characters outside
    the alphabet is a 400 from the gateway (CouchDB would answer 500).

    Guards against: ``b64decode(validate=False)``, which drops such characters silently."""
    import base64
    import hashlib

    body = b"payload"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    base = f"/api/v1/db/{scenario.db.name}/docs/md5"
    made = await scenario.admin.put(base, json_body={"n": 1})
    for bad in (good[:4] + "$" + good[4:], good[:8] + "!" + good[8:], "*" + good):
        up = await scenario.admin.put(f"{base}/attachments/a.bin?rev={made.json['rev']}",
                                      data=body, headers={"Content-Type": "application/x-a",
                                                          "Content-MD5": bad})
        assert up.status == 400, (bad, up.status, up.json)
        assert "Content-MD5" in up.json["reason"], up.json
