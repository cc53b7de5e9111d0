"""Request bodies the gateway must hold in temporary files, on a full disk.

A JSON body over 100 kB is spooled by Twisted, and a chunked attachment upload (or any
upload to pouchdb-server) by the gateway, before either goes upstream. With the
temporary directory full, the client used to get no answer at all (the ``OSError``
escaped from ``dataReceived``): it must get a JSON 507, nothing may be stored, and the
gateway must serve the next request. The temporary directory is a real 1 MiB tmpfs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from tests.rest.conftest import Scenario
from tests.rest.test_attachments import _chunk, _chunked_head, _connect, _doc, _until


def _small_tmpfs(where: Path, options: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    try:
        yield where
    finally:
        monkeypatch.undo()
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def full_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tempfile``'s directory on a 1 MiB tmpfs of its own."""
    yield from _small_tmpfs(tmp_path / "tiny", "size=1m", monkeypatch)


@pytest.fixture
def no_file_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tempfile``'s directory where no file can be made at all (no inode left)."""
    yield from _small_tmpfs(tmp_path / "noinode", "size=1m,nr_inodes=1", monkeypatch)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _auth(scenario: Scenario) -> dict[str, str]:
    return {k: v for k, v in scenario.member_client.default_headers.items()
            if k == "Authorization"}


def _answer(data: bytes) -> tuple[bytes, dict[str, Any]]:
    head, _, body = data.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"").partition(b"\r\n\r\n")
    return head, json.loads(body)


def _no_room_logged(events: list[dict[str, Any]]) -> bool:
    return any("cannot hold a request body" in (e.get("log_format") or "") for e in events)


async def test_a_chunked_upload_meeting_a_full_disk_is_answered_507(
    scenario: Scenario, full_temp_dir: Path, logged: list[dict[str, Any]],
) -> None:
    base, rev = await _doc(scenario)
    raw = await _connect(scenario.member_client.base)
    raw.transport.write(_chunked_head(f"{base}/attachments/big.bin?rev={rev}", _auth(scenario)))
    payload = os.urandom(64_000)
    for _ in range(40):  # 2.5 MB for a 1 MiB disk
        if raw.closed.called or b"\r\n\r\nHTTP/1.1 " in raw.data or raw.data.startswith(b"HTTP/1.1 5"):
            break
        raw.transport.write(_chunk(payload))
        await _until(lambda: True)
    if not raw.closed.called:
        raw.transport.write(b"0\r\n\r\n")
    await _until(lambda: b"}" in raw.data.rpartition(b"\r\n\r\n")[2], raw=raw)
    head, body = _answer(raw.data)
    assert head.startswith(b"HTTP/1.1 507 "), raw.data[:300]
    assert body["error"] == "insufficient_storage" and body["status"] == 507
    assert b"retry-after: 30" in head.lower()
    assert _no_room_logged(logged)
    raw.transport.loseConnection()
    client = scenario.member_client
    assert (await client.get(f"{base}/attachments/big.bin")).status == 404  # nothing stored
    assert os.listdir(full_temp_dir) == []  # the partial spool is gone
    small = await client.put(f"{base}/attachments/small.txt?rev={rev}", data=b"fits",
                             headers={"Content-Type": "text/plain"})
    assert small.status == 201  # the gateway goes on


async def test_a_large_json_body_meeting_a_full_disk_is_answered_507(
    scenario: Scenario, full_temp_dir: Path, logged: list[dict[str, Any]],
) -> None:
    body = json.dumps({"docs": [{"_id": f"b{i:05d}", "pad": "x" * 200}
                                for i in range(9000)]}).encode()  # 2 MB, under the 8 MiB cap
    raw = await _connect(scenario.member_client.base)
    head = [f"POST /api/v1/db/{scenario.db.name}/bulk_docs HTTP/1.1", "Host: gw",
            f"Content-Length: {len(body)}", "Content-Type: application/json",
            *(f"{k}: {v}" for k, v in _auth(scenario).items())]
    raw.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await _until(lambda: b"}" in raw.data.rpartition(b"\r\n\r\n")[2], raw=raw)
    status, answer = _answer(raw.data)
    assert status.startswith(b"HTTP/1.1 507 "), raw.data[:300]
    assert answer["error"] == "insufficient_storage"
    assert _no_room_logged(logged)
    raw.transport.loseConnection()
    client = scenario.member_client
    listed = await client.get(f"/api/v1/db/{scenario.db.name}/all_docs?limit=1")
    assert listed.json["rows"] == []  # nothing was sent upstream
    assert os.listdir(full_temp_dir) == []
    fits = await client.post(f"/api/v1/db/{scenario.db.name}/bulk_docs",
                             json_body={"docs": [{"_id": "small"}]})
    assert fits.status == 201


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_json_body_with_no_room_for_its_file_is_answered_507(
    scenario: Scenario, no_file_temp_dir: Path, chunked: bool,
) -> None:
    """Twisted failed to make the temporary file before there was one to close: the
    client got no answer (an AttributeError escaped from dataReceived)."""
    body = json.dumps({"docs": [{"_id": f"b{i:05d}", "pad": "x" * 200}
                                for i in range(600)]}).encode()  # 130 kB: spooled
    framing = ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {len(body)}"]
    head = [f"POST /api/v1/db/{scenario.db.name}/bulk_docs HTTP/1.1", "Host: gw",
            "Content-Type: application/json", *framing,
            *(f"{k}: {v}" for k, v in _auth(scenario).items())]
    payload = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n" if chunked else body
    raw = await _connect(scenario.member_client.base)
    raw.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    await _until(lambda: raw.closed.called or b"}" in raw.data.rpartition(b"\r\n\r\n")[2],
                 raw=raw)
    status, answer = _answer(raw.data)
    assert status.startswith(b"HTTP/1.1 507 "), raw.data[:300]
    assert answer["error"] == "insufficient_storage"
    raw.transport.loseConnection()

