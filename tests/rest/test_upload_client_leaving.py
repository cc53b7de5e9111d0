"""A client leaving a streamed attachment upload midway is the client's doing, not CouchDB's.

A real ``python -m gateway run`` process (its JSON access log read from its output) in
front of the benchmark's stub upstream (which CouchDB-like streams uploads, unlike
pouchdb-server); raw client sockets that send part of a declared body, then close or
reset (``SO_LINGER`` 0). Through the Python path (splice off, or a body under
``MIN_SPLICE_BYTES``) and the spliced one, the access line says aborted with no error
(status 499: nobody was answered),
as for a client leaving a download, and no upstream error is counted. CouchDB going
away midway stays ``upstream_unavailable``.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from benches.stream import StubUpstream, blocks
from gateway.http.splice_loop import MIN_SPLICE_BYTES, available
from tests.support.gatewayproc import GatewayProcess, spawn_gateway
from tests.ws.conftest import wait_until

MIB = 1 << 20
SEED = bytes(range(256)) * 4
AUTH = "Basic " + base64.b64encode(b"admin:stub").decode()
pytestmark = pytest.mark.skipif(not available(), reason="splice(2) is Linux-only")

#: The upload paths: whether the gateway may splice, and the declared body length.
MODES = {
    "python": ("false", 8 * MIB),
    "python, under the splice threshold": ("true", MIN_SPLICE_BYTES - 64 * 1024),
    "spliced": ("true", 8 * MIB),
}


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubUpstream]:
    upstream = StubUpstream(tmp_path, SEED)
    yield upstream
    upstream.stop()
    if upstream.process.poll() is None:
        upstream.process.kill()


async def _spawn(reactor: Any, tmp_path: Path, stub: StubUpstream,
                 splice_uploads: str) -> GatewayProcess:
    env = {**os.environ, "COUCHDB_URL": stub.url, "COUCHDB_USER": "admin",
           "COUCHDB_PASSWORD": "stub", "WALLABY_LOG_FORMAT": "json",
           "WALLABY_RATE_LIMIT_PER_SECOND": "0", "WALLABY_PORT": "0",
           "WALLABY_SPLICE_UPLOADS": splice_uploads}
    return await spawn_gateway(reactor, env, tmp_path / "gateway.log")


@pytest_twisted.async_yield_fixture
async def processes() -> AsyncIterator[list[GatewayProcess]]:
    """The gateway processes a test started, stopped at its end."""
    started: list[GatewayProcess] = []
    yield started
    for child in started:
        child.stop()


def _path(doc: str) -> str:
    return f"/api/v1/db/files/docs/{doc}/attachments/blob"


def _head(doc: str, length: int) -> bytes:
    return (f"PUT {_path(doc)} HTTP/1.1\r\nHost: gateway\r\nAuthorization: {AUTH}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
            ).encode()


def _payload(size: int) -> bytes:
    return b"".join(blocks(size, SEED))


def _put_whole(port: int, doc: str, size: int) -> int:
    """A complete upload (it warms the gateway: CouchDB's welcome, the identity)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{_path(doc)}", data=_payload(size), method="PUT",
        headers={"Authorization": AUTH, "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


def _send_part_then_leave(port: int, doc: str, length: int, how: str) -> None:
    """Declare ``length`` bytes, send half of them, then close or reset the connection."""
    payload = _payload(length)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(_head(doc, length) + payload[: length // 2])
        time.sleep(1.0)  # the upload is under way upstream
        if how == "resets":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


async def _line_of(reactor: Any, child: GatewayProcess, doc: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [line for line in child.access_lines() if line["path"] == _path(doc)]

    await wait_until(reactor, lambda: bool(found()), 15.0)
    [line] = found()
    return line


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_client_leaving_a_streamed_upload_is_not_counted_against_couchdb(
    mode: str, reactor: Any, tmp_path: Path, stub: StubUpstream,
    processes: list[GatewayProcess],
) -> None:
    splice_uploads, length = MODES[mode]
    child = await _spawn(reactor, tmp_path, stub, splice_uploads)
    processes.append(child)
    assert await deferToThread(_put_whole, child.port, "warm", 64 * 1024) == 201
    for how in ("closes", "resets"):
        doc = f"cut-{how}"
        await deferToThread(_send_part_then_leave, child.port, doc, length, how)
        line = await _line_of(reactor, child, doc)
        # As for a client leaving a download: aborted, no error; and as nobody was
        # answered, nginx's 499 rather than a status never sent.
        assert line["aborted"] is True, (how, line)
        assert line["error"] is None and line["status"] == 499, (how, line)
    metrics = await deferToThread(_metrics, child.port)
    assert 'wallaby_errors_total{route="putAttachment"' not in metrics, metrics
    assert 'route="putAttachment",method="PUT",status="499"} 2' in metrics, metrics
    assert 'route="putAttachment",method="PUT",status="200"}' not in metrics, metrics
    spliced = "wallaby_spliced_uploads_total 2" if mode == "spliced" \
        else "wallaby_spliced_uploads_total 0"
    assert spliced in metrics  # each upload took the path the case is about


@pytest.mark.parametrize("mode", list(MODES))
async def test_couchdb_leaving_a_streamed_upload_is_upstream_unavailable(
    mode: str, reactor: Any, tmp_path: Path, stub: StubUpstream,
    processes: list[GatewayProcess],
) -> None:
    splice_uploads, length = MODES[mode]
    doomed = StubUpstream(tmp_path, SEED)
    try:
        child = await _spawn(reactor, tmp_path, doomed, splice_uploads)
        processes.append(child)
        assert await deferToThread(_put_whole, child.port, "warm", 64 * 1024) == 201
        payload = _payload(length)

        def upload_while_couchdb_dies() -> bytes:
            with socket.create_connection(("127.0.0.1", child.port), timeout=30) as sock:
                sock.sendall(_head("doomed", length) + payload[: length // 2])
                time.sleep(1.0)
                doomed.process.kill()
                doomed.process.wait()
                time.sleep(0.5)
                try:
                    sock.sendall(payload[length // 2:])
                    answer = b""
                    while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                        answer += chunk
                except OSError:
                    answer = b""
                return answer

        answer = await deferToThread(upload_while_couchdb_dies)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        line = await _line_of(reactor, child, "doomed")
        assert line["error"] == "upstream_unavailable" and line["status"] == 503, line
        metrics = await deferToThread(_metrics, child.port)
        assert 'wallaby_errors_total{route="putAttachment",error="upstream_unavailable"} 1' \
            in metrics, metrics
    finally:
        if doomed.process.poll() is None:
            doomed.process.kill()
