"""Attachments against the real server: byte-exact round trips, streaming both ways."""

from __future__ import annotations

import hashlib
import io
import os
import resource
from pathlib import Path
from typing import Any

import pytest

from gateway.couch import Database, NotFound


async def test_all_byte_values_round_trip(db: Database) -> None:
    content = bytes(range(256)) * 4
    doc: dict[str, Any] = {"_id": "bin"}
    await db.save(doc)
    first_rev = doc["_rev"]
    result = await db.put_attachment(doc, "blob.bin", content, content_type="application/x-raw")
    assert result["ok"] is True and doc["_rev"] == result["rev"] != first_rev
    assert await db.get_attachment(doc, "blob.bin") == content
    stored = await db.get("bin")
    meta = stored["_attachments"]["blob.bin"]
    assert meta["content_type"] == "application/x-raw"
    assert meta["length"] == len(content)


async def test_attachment_on_new_document_and_names_with_slashes(db: Database) -> None:
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(1000)
    await db.put_attachment("fresh", "img/sub dir/ä.png", png, content_type="image/png")
    doc = await db.get("fresh")
    assert list(doc["_attachments"]) == ["img/sub dir/ä.png"]
    assert await db.get_attachment("fresh", "img/sub dir/ä.png") == png
    await db.delete_attachment(doc, "img/sub dir/ä.png")
    with pytest.raises(NotFound):
        await db.get_attachment("fresh", "img/sub dir/ä.png")


async def test_original_readme_attachment_flow(db: Database) -> None:
    doc: dict[str, Any] = {"_id": "newdocid"}
    await db.save(doc)
    res = await db.put_attachment(doc, "newimage.png", b"not really a png", content_type="image/png")
    assert res["ok"]
    assert await db.get_attachment(doc, "newimage.png") == b"not really a png"
    res = await db.delete_attachment(doc, "newimage.png")
    assert res["ok"] and doc["_rev"].startswith("3-")
    with pytest.raises(ValueError, match="_rev"):
        await db.delete_attachment("newdocid", "newimage.png")


async def test_multi_megabyte_file_streams_both_ways(db: Database, tmp_path: Path) -> None:
    """A 24 MiB file goes up from a file object and comes down into a file, never whole."""
    size = 24 * 1024 * 1024
    source = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        block = os.urandom(1024 * 1024)
        for i in range(size // len(block)):
            chunk = bytes([i % 256]) + block[1:]
            digest.update(chunk)
            out.write(chunk)
    doc: dict[str, Any] = {"_id": "big"}
    await db.save(doc)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with source.open("rb") as content:
        await db.put_attachment(doc, "big.bin", content, content_type="application/octet-stream")
    target = tmp_path / "copy.bin"
    received_digest = hashlib.sha256()
    chunks = 0

    def sink(chunk: bytes) -> None:
        nonlocal chunks
        chunks += 1
        received_digest.update(chunk)

    written = await db.download_attachment(doc, "big.bin", sink)
    with target.open("wb") as out:
        assert await db.download_attachment(doc, "big.bin", out) == size
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert written == size
    assert received_digest.hexdigest() == digest.hexdigest()
    assert chunks > 10, "the download must arrive in many chunks, not one buffer"
    assert target.stat().st_size == size
    # Peak RSS (KiB) must not grow by anything near the file size.
    assert (rss_after - rss_before) * 1024 < size // 2


async def test_open_attachment_exposes_headers_for_streaming(db: Database) -> None:
    await db.put_attachment("h", "a.txt", b"hello world", content_type="text/plain")
    response = await db.open_attachment("h", "a.txt")
    assert response.code == 200
    content_type = response.headers.getRawHeaders(b"content-type")[0]
    assert content_type.startswith(b"text/plain")
    import treq

    assert await treq.content(response) == b"hello world"


async def test_put_attachment_accepts_a_body_producer(db: Database) -> None:
    from twisted.web.client import FileBodyProducer

    producer = FileBodyProducer(io.BytesIO(b"produced"))
    await db.put_attachment("p", "x.bin", producer)
    assert await db.get_attachment("p", "x.bin") == b"produced"
