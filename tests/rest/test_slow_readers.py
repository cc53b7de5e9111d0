"""A client that stops reading a streamed response is cut after WALLABY_SEND_STALL_TIMEOUT.

A "slow read" attack: ask for something large, then read nothing. Backpressure pauses the
upstream connection, so without a limit the response and its upstream connection would
be held forever. Real sockets, the real server: the client's receive buffer is made small
and it reads nothing for a few seconds; then it drains what it can. Cut, it gets part of
the response and then the end of the connection; never cut, it would get all of it.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

import pytest
from twisted.internet.task import deferLater

from tests.rest.conftest import Scenario, StartGateway, basic

STALL = 1.0
SIZE = 8 << 20  # well past the kernel's buffers on both sides (4 MiB at most for sending)


async def _large_answer(scenario: Scenario) -> str:
    base = f"/api/v1/db/{scenario.db.name}"
    pad = "p" * 10_000
    for batch in range(SIZE // (200 * len(pad)) + 1):
        docs = [{"_id": f"doc{batch:02}-{i:03}", "pad": pad} for i in range(200)]
        written = await scenario.member_client.post(f"{base}/bulk_docs", json_body={"docs": docs})
        assert written.status == 201
    return f"{base}/all_docs?include_docs=true"


async def _large_attachment(scenario: Scenario) -> str:
    doc = f"/api/v1/db/{scenario.db.name}/docs/big"
    made = await scenario.member_client.put(doc, json_body={"kind": "big"})
    put = await scenario.member_client.put(
        f"{doc}/attachments/blob.bin?rev={made.json['rev']}", data=b"b" * SIZE,
        headers={"Content-Type": "application/octet-stream"})
    assert put.status == 201
    return f"{doc}/attachments/blob.bin"


async def _read_all(reactor: Any, sock: socket.socket, seconds: float) -> tuple[int, bool]:
    """Drain the socket without blocking the reactor: (bytes read, whether it ended)."""
    sock.setblocking(False)
    total, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            await deferLater(reactor, 0.01, lambda: None)
            continue
        except OSError as exc:
            assert exc.errno == errno.ECONNRESET, exc
            return total, True
        if not chunk:
            return total, True
        total += len(chunk)
    return total, False


@pytest.mark.parametrize("kind", ["large answer", "download (Python relay)", "download (splice)"])
async def test_a_client_that_reads_nothing_is_cut(
    kind: str, start_gateway: StartGateway, scenario: Scenario, reactor: Any
) -> None:
    streaming = {"buffer_answer_bytes": 1 << 20, "send_stall_timeout": STALL}
    if kind == "download (Python relay)":
        streaming["splice_downloads"] = False
    gateway = await start_gateway(**streaming)
    path = await (_large_answer(scenario) if kind == "large answer"
                  else _large_attachment(scenario))
    port = int(gateway.url.rsplit(":", 1)[1])
    auth = basic(scenario.member.name, scenario.member.password)["Authorization"]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\r\n".encode())
        await deferLater(reactor, STALL * 4, lambda: None)  # read nothing meanwhile
        received, ended = await _read_all(reactor, sock, 20)
    finally:
        sock.close()
    assert ended, f"{kind}: the gateway kept the connection open"
    assert 0 < received < SIZE, f"{kind}: {received} bytes, the whole response or nothing"

    # The gateway is fine afterwards, and so is a reader that keeps reading.
    again = await gateway.as_user(scenario.member).get(path)
    assert again.status == 200 and len(again.body) >= SIZE
    # Every path names the client as the one that held the transfer up.
    if kind == "download (splice)":
        assert gateway.app.splicer.failed == 1
    route = "allDocs" if kind == "large answer" else "getAttachment"
    metrics = (await gateway.client.get("/metrics")).body.decode()
    assert f'wallaby_errors_total{{route="{route}",error="client_stalled"}} 1' in metrics
