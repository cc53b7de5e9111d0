"""Attachments: streamed up and down, Content-Type kept, ETag/304, Range/206, lengths."""

from __future__ import annotations

import hashlib
import os

from tests.rest.conftest import Scenario


async def _doc(scenario: Scenario) -> tuple[str, str]:
    base = f"/api/v1/db/{scenario.db.name}/docs/doc"
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

    head = await client.request("HEAD", url)
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(payload))  # kept in headers for HEAD

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


async def test_attachment_names_are_validated(scenario: Scenario) -> None:
    base, rev = await _doc(scenario)
    for name in ("_reserved", "a%2F%2Fb", "a%2F..%2Fb", "%2Fa"):
        reply = await scenario.member_client.put(
            f"{base}/attachments/{name}?rev={rev}", data=b"x",
            headers={"Content-Type": "text/plain"},
        )
        assert reply.status == 400, name
