"""Edges of streamed answers found in review (each test failed on 98c47e7).

Real sockets against the real server, as in ``test_slow_readers``: a HEAD of a large
query answer sends no body (it kept the connection's framing in step); a reader that
keeps reading, however slowly its gateway buffer drains, is not taken for one that
stopped; a stream cut midway is logged as aborted, with why; a client that leaves at
once, while the gateway still connects upstream, is not logged as an error.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from typing import Any

import pytest
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from tests.rest.conftest import Scenario, StartGateway, basic
from tests.support.faultproxy import FaultProxy

LIMIT = 64 << 10
DDOC = {"views": {"all": {"map": "function(doc) { emit(doc._id, doc.pad); }"}}}


async def _seed(scenario: Scenario, batches: int) -> str:
    """200 documents of 10 kB per batch (2 MB each)."""
    base = f"/api/v1/db/{scenario.db.name}"
    assert (await scenario.admin.put(f"{base}/docs/_design%2Fd", json_body=DDOC)).status == 201
    pad = "p" * 10_000
    for batch in range(batches):
        docs = [{"_id": f"doc{batch:02}-{i:03}", "pad": pad} for i in range(200)]
        written = await scenario.member_client.post(f"{base}/bulk_docs", json_body={"docs": docs})
        assert written.status == 201
    return base


def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def _read(
    reactor: Any, sock: socket.socket, seconds: float, chunk: int = 1 << 20,
    pace: float = 0.0,
) -> tuple[bytes, bool]:
    """Read for ``seconds`` (``chunk`` bytes every ``pace`` s): (bytes, whether it ended)."""
    data, deadline = bytearray(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got = sock.recv(chunk)
        except BlockingIOError:
            await deferLater(reactor, pace or 0.005, lambda: None)
            continue
        except OSError as exc:
            assert exc.errno == errno.ECONNRESET, exc
            return bytes(data), True
        if not got:
            return bytes(data), True
        data += got
        if pace:
            await deferLater(reactor, pace, lambda: None)
    return bytes(data), False


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("route", ["all_docs?include_docs=true", "views/d/all"])
async def test_a_head_of_a_large_answer_sends_no_body(
    route: str, start_gateway: StartGateway, scenario: Scenario, reactor: Any
) -> None:
    base = await _seed(scenario, 1)
    gateway = await start_gateway(buffer_answer_bytes=LIMIT)
    auth = basic(scenario.member.name, scenario.member.password)["Authorization"]
    sock = _connect(_port(gateway.url))
    try:
        sock.sendall(  # a HEAD, then another request on the same (kept-alive) connection
            f"HEAD {base}/{route} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"
            "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received, _ended = await _read(reactor, sock, 3)
    finally:
        sock.close()
    head, _, after = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    # The next bytes must be the answer to GET /health, not the view's body.
    assert after.startswith(b"HTTP/1.1 200"), f"{len(after)} bytes: {after[:60]!r}"


@pytest.mark.parametrize("kind", ["large answer", "download (Python relay)"])
async def test_a_slow_but_steady_reader_is_not_cut(
    kind: str, start_gateway: StartGateway, scenario: Scenario, reactor: Any
) -> None:
    base = await _seed(scenario, 5)  # about 10 MB
    # The answer's head, or the relay's 1 MiB writes, take the reader longer than the
    # stall timeout to drain, though it never stops reading.
    gateway = await start_gateway(buffer_answer_bytes=8 << 20, send_stall_timeout=2.0,
                                  splice_downloads=False)
    if kind == "large answer":
        path, size = f"{base}/all_docs?include_docs=true", 10_000_000
    else:
        doc = f"{base}/docs/big"
        made = await scenario.member_client.put(doc, json_body={})
        size = 6 << 20
        put = await scenario.member_client.put(
            f"{doc}/attachments/blob.bin?rev={made.json['rev']}", data=b"b" * size,
            headers={"Content-Type": "application/octet-stream"})
        assert put.status == 201
        path = f"{doc}/attachments/blob.bin"
    auth = basic(scenario.member.name, scenario.member.password)["Authorization"]
    sock = _connect(_port(gateway.url), rcvbuf=65536)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                     f"Connection: close\r\nAuthorization: {auth}\r\n\r\n".encode())
        # 32 kB every 30 ms, about 1 MB/s: never more than 30 ms without progress.
        received, ended = await _read(reactor, sock, 60, chunk=32768, pace=0.03)
    finally:
        sock.close()
    assert ended and len(received) > size, f"{kind}: cut after {len(received)} bytes"
    if kind == "large answer":
        assert received.endswith(b"\r\n0\r\n\r\n"), "the chunked body did not end"


@pytest.mark.parametrize("fault", ["upstream breaks off", "upstream goes silent",
                                   "client reads nothing"])
async def test_a_stream_cut_midway_is_logged_as_aborted(
    fault: str, start_gateway: StartGateway, scenario: Scenario, reactor: Any,
    proxy: FaultProxy,
) -> None:
    lines: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "access" in event:
            lines.append(event["access"])

    base = await _seed(scenario, 5)
    gateway = await start_gateway(couchdb_url=proxy.url, buffer_answer_bytes=LIMIT,
                                  request_timeout=1.0, send_stall_timeout=1.0)
    member = gateway.as_user(scenario.member)
    assert (await member.get(f"{base}/all_docs?limit=1")).status == 200  # user checked
    if fault != "client reads nothing":
        proxy.stall_after(3 * LIMIT)
    auth = basic(scenario.member.name, scenario.member.password)["Authorization"]
    globalLogPublisher.addObserver(observe)
    sock = _connect(_port(gateway.url), rcvbuf=4096)
    try:
        sock.sendall(f"GET {base}/all_docs?include_docs=true HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: {auth}\r\n\r\n".encode())
        if fault == "client reads nothing":
            await deferLater(reactor, 3, lambda: None)
        else:
            await _read(reactor, sock, 0.5)
            if fault == "upstream breaks off":
                proxy.reset_all()
        _received, ended = await _read(reactor, sock, 10)
        assert ended  # the client's connection was cut
        await deferLater(reactor, 0.2, lambda: None)
    finally:
        sock.close()
        globalLogPublisher.removeObserver(observe)
    line = [entry for entry in lines if entry["route"] == "allDocs"][-1]
    assert line["aborted"] is True, line
    assert line["error"] == {"upstream breaks off": "upstream_unavailable", "upstream goes silent":
                             "upstream_timeout", "client reads nothing": "client_stalled"}[fault]


@pytest.mark.parametrize("path", ["all_docs?limit=1", "docs/nothere", "all_docs?include_docs=true"])
async def test_a_client_that_leaves_at_once_is_no_error(
    path: str, start_gateway: StartGateway, scenario: Scenario, reactor: Any
) -> None:
    """Gone while the gateway still connects upstream: not an error to log (it was a
    DNSLookupError from Twisted's cancelled host-name lookup, logged as unhandled)."""
    await _seed(scenario, 1)
    gateway = await start_gateway(buffer_answer_bytes=LIMIT)
    base = f"/api/v1/db/{scenario.db.name}"
    auth = basic(scenario.member.name, scenario.member.password)["Authorization"]
    assert (await gateway.as_user(scenario.member).get(f"{base}/all_docs?limit=1")).status == 200
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(5):
            sock = _connect(_port(gateway.url))
            sock.sendall(
                f"GET {base}/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, at once
            await deferLater(reactor, 0.3, lambda: None)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not errors, [str(e.get("failure") or e.get("log_failure")) for e in errors]
