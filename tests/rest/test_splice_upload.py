"""Zero-copy uploads (gateway.http.splice_relay.Splicer.try_upload): real client sockets,
a real gateway, and the benchmark's stub upstream (pouchdb-server's uploads are spooled,
never spliced; the attachment tests cover those)."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import capturedLogs

from benches.stream import StubUpstream, blocks
from gateway.http.splice_loop import MIN_SPLICE_BYTES, available
from tests.rest.conftest import RunningGateway, StartGateway
from tests.rest.test_splice_relay import _connections_to, _fds, _port, _thread
from tests.ws.conftest import wait_until

pytestmark = pytest.mark.skipif(not available(), reason="splice(2) is Linux-only")

MIB = 1 << 20
SEED = bytes(range(256)) * 4
AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:stub").decode()}


def _payload(size: int) -> bytes:
    return b"".join(blocks(size, SEED))


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubUpstream]:
    """The benchmark's fast CouchDB stand-in: it keeps each upload's length and CRC-32."""
    upstream = StubUpstream(tmp_path, SEED)
    yield upstream
    upstream.stop()


async def _stub_gateway(start_gateway: StartGateway, stub: StubUpstream,
                        **overrides: Any) -> RunningGateway:
    return await start_gateway(couchdb_url=stub.url, couchdb_user="admin",
                               couchdb_password="stub", **overrides)


def _attachment(doc: str) -> str:
    return f"/api/v1/db/files/docs/{doc}/attachments/blob"


def _put(port: int, doc: str, payload: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("PUT", _attachment(doc), body=payload, headers={
            **AUTH, "Content-Type": "application/octet-stream"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def _head(doc: str, length: int) -> bytes:
    return (f"PUT {_attachment(doc)} HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: {AUTH['Authorization']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n").encode()


async def test_large_upload_is_spliced_intact_and_keep_alive_goes_on(
    start_gateway: StartGateway, stub: StubUpstream, reactor: Any
) -> None:
    gateway = await _stub_gateway(start_gateway, stub)
    splicer = gateway.app.splicer
    payload = _payload(6 * MIB + 7)

    def upload_then_download() -> tuple[int, bytes, int, bytes, bool]:
        conn = http.client.HTTPConnection("127.0.0.1", _port(gateway), timeout=30)
        try:
            conn.request("PUT", _attachment("big"), body=payload, headers={
                **AUTH, "Content-Type": "application/octet-stream"})
            up = conn.getresponse()
            answer = up.read()
            sock = conn.sock
            conn.request("GET", _attachment("big"), headers=AUTH)
            down = conn.getresponse()
            return up.status, answer, down.status, down.read(), conn.sock is sock
        finally:
            conn.close()

    status, answer, status2, body, same_connection = await _thread(reactor, upload_then_download)
    assert status == 201, answer
    stored = json.loads(answer)
    assert stored["size"] == len(payload) and stored["crc"] == zlib.crc32(payload)
    assert splicer.uploads == 1 and splicer.uploads_failed == 0
    assert 0 < splicer.upload_bytes <= len(payload)
    assert same_connection, "the keep-alive connection was closed after the spliced upload"
    assert status2 == 200 and zlib.crc32(body) == zlib.crc32(payload) and body == payload
    await wait_until(reactor, lambda: splicer.active_uploads == 0, seconds=15)
    metrics = await gateway.client.get("/metrics")
    assert "wallaby_spliced_uploads_total 1" in metrics.body.decode()


async def test_pipelined_request_after_a_spliced_upload_is_answered(
    start_gateway: StartGateway, stub: StubUpstream, reactor: Any
) -> None:
    """The next request sent right behind the body: the channel was left in step."""
    gateway = await _stub_gateway(start_gateway, stub)
    payload = _payload(3 * MIB)
    second = b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"

    def pipelined() -> bytes:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
            sock.sendall(_head("piped", len(payload)) + payload + second)
            got = b""
            while chunk := sock.recv(1 << 16):  # until the gateway closes, after both
                got += chunk
            return got

    got = await _thread(reactor, pipelined)
    assert got.startswith(b"HTTP/1.1 201 "), got[:200]
    assert got.count(b"HTTP/1.1 200 ") == 1, got
    assert gateway.app.splicer.uploads == 1 and gateway.app.splicer.uploads_failed == 0


async def test_a_client_waiting_for_100_continue_is_spliced_too(
    start_gateway: StartGateway, stub: StubUpstream, reactor: Any
) -> None:
    """No body byte has come when the upstream request starts (curl's way)."""
    gateway = await _stub_gateway(start_gateway, stub)
    payload = _payload(5 * MIB)
    head = _head("continued", len(payload)).replace(
        b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")

    def expect_continue() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
            sock.sendall(head)
            interim = sock.recv(1 << 10)
            sock.sendall(payload)
            got = b""
            while b"}" not in got:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            return interim, got

    interim, got = await _thread(reactor, expect_continue)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert got.startswith(b"HTTP/1.1 201 "), got[:300]
    stored = json.loads(got.split(b"\r\n\r\n", 1)[1])
    assert stored["size"] == len(payload) and stored["crc"] == zlib.crc32(payload)
    assert gateway.app.splicer.uploads == 1 and gateway.app.splicer.uploads_failed == 0


async def test_an_upload_of_exactly_one_mib_is_spliced(
    start_gateway: StartGateway, stub: StubUpstream, reactor: Any
) -> None:
    """README: uploads "of 1 MiB or more" are spliced (the boundary itself included)."""
    assert MIN_SPLICE_BYTES == MIB
    gateway = await _stub_gateway(start_gateway, stub)
    splicer = gateway.app.splicer
    payload = _payload(MIB)
    status, stored = await _thread(reactor, lambda: _put(_port(gateway), "exact", payload))
    assert status == 201 and stored["size"] == len(payload)
    assert stored["crc"] == zlib.crc32(payload)
    assert splicer.uploads == 1 and splicer.uploads_failed == 0, "1 MiB upload not spliced"
    await wait_until(reactor, lambda: splicer.active_uploads == 0, seconds=15)


async def test_small_uploads_and_the_switch_use_python(
    start_gateway: StartGateway, stub: StubUpstream, reactor: Any
) -> None:
    gateway = await _stub_gateway(start_gateway, stub)
    small = _payload(200_000)
    status, stored = await _thread(reactor, lambda: _put(_port(gateway), "small", small))
    assert status == 201 and stored["crc"] == zlib.crc32(small)
    assert gateway.app.splicer.uploads == 0

    plain = await _stub_gateway(start_gateway, stub, splice_uploads=False)
    big = _payload(3 * MIB + 1)
    status, stored = await _thread(reactor, lambda: _put(_port(plain), "plain", big))
    assert status == 201 and stored["size"] == len(big) and stored["crc"] == zlib.crc32(big)
    assert plain.app.splicer.uploads == 0 and plain.app.splicer.uploads_failed == 0
    metrics = await plain.client.get("/metrics")
    assert "wallaby_spliced_uploads_total 0" in metrics.body.decode()


@pytest.mark.parametrize("how", ["closes", "resets"])
async def test_client_leaving_midway_aborts_the_upstream_and_leaks_nothing(
    how: str, start_gateway: StartGateway, stub: StubUpstream, reactor: Any
) -> None:
    """Whether the client's socket ends or is reset, it is the client that went."""
    gateway = await _stub_gateway(start_gateway, stub)
    splicer = gateway.app.splicer
    await gateway.client.get("/api/v1/db/files/docs/none", headers=AUTH)  # warm the pool
    fds_before = _fds()
    during: set[int] = set()
    started = threading.Event()
    payload = _payload(32 * MIB)

    def send_part_then_leave() -> None:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
            sock.sendall(_head("cut", len(payload)) + payload[: 4 * MIB])
            started.wait(15)
            during.update(_connections_to(stub.port))
            if how == "resets":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with capturedLogs() as events:
        leaving = _thread(reactor, send_part_then_leave)
        await wait_until(reactor, lambda: splicer.uploads == 1, seconds=15)
        started.set()
        await leaving
        await wait_until(reactor, lambda: splicer.active_uploads == 0 and splicer.uploads_failed == 1, seconds=15)
        await wait_until(reactor, lambda: any(isinstance(e.get("access"), dict) for e in events), seconds=15)
    [line] = [e["access"] for e in events if isinstance(e.get("access"), dict)]
    # The client went: it was not answered, and CouchDB did nothing wrong.
    assert line["aborted"] is True and line["error"] is None, line
    await wait_until(reactor, lambda: not during & _connections_to(stub.port), seconds=15)
    assert during, "no upstream connection seen during the upload"
    await wait_until(reactor, lambda: _fds()["pipe"] == fds_before["pipe"]
                 and _fds()["anon:eventfd"] == fds_before["anon:eventfd"], seconds=15)
    # Nothing stored upstream, and the gateway goes on serving spliced uploads.
    missing = await gateway.client.get("/api/v1/db/files/docs/cut", headers=AUTH)
    assert missing.status == 404
    again = _payload(2 * MIB)
    status, stored = await _thread(reactor, lambda: _put(_port(gateway), "again", again))
    assert status == 201 and stored["crc"] == zlib.crc32(again)
    assert splicer.uploads == 2 and splicer.uploads_failed == 1


async def test_upstream_leaving_midway_answers_an_error_and_keeps_the_connection(
    start_gateway: StartGateway, stub: StubUpstream, tmp_path: Path, reactor: Any
) -> None:
    doomed = StubUpstream(tmp_path, SEED)
    try:
        gateway = await _stub_gateway(start_gateway, doomed)
        splicer = gateway.app.splicer
        payload = _payload(24 * MIB)
        halfway = threading.Event()

        def upload_while_upstream_dies() -> tuple[int, bytes, int, bool]:
            conn = http.client.HTTPConnection("127.0.0.1", _port(gateway), timeout=30)
            try:
                conn.putrequest("PUT", _attachment("doomed"))
                for name, value in {**AUTH, "Content-Type": "application/octet-stream",
                                    "Content-Length": str(len(payload))}.items():
                    conn.putheader(name, value)
                conn.endheaders()
                conn.send(payload[: 4 * MIB])
                halfway.wait(15)
                conn.send(payload[4 * MIB:])  # read and dropped by the gateway
                answer = conn.getresponse()
                body = answer.read()
                sock = conn.sock
                conn.request("GET", "/health")
                health = conn.getresponse()
                health.read()
                return answer.status, body, health.status, conn.sock is sock
            finally:
                conn.close()

        uploading = _thread(reactor, upload_while_upstream_dies)
        await wait_until(reactor, lambda: splicer.uploads == 1, seconds=15)
        await _thread(reactor, doomed.stop)
        halfway.set()
        status, body, health, same_connection = await uploading
        assert status in (502, 503), body
        # The rest of the body was read and dropped: the connection is still in step.
        assert health == 200 and same_connection
        await wait_until(reactor, lambda: splicer.active_uploads == 0, seconds=15)
        assert splicer.uploads_failed == 1
    finally:
        if doomed.process.poll() is None:
            doomed.process.kill()


async def test_a_stalled_client_is_cut_off(
    start_gateway: StartGateway, stub: StubUpstream, reactor: Any
) -> None:
    gateway = await _stub_gateway(start_gateway, stub)
    splicer = gateway.app.splicer
    splicer.stall_timeout = 0.5
    payload = _payload(8 * MIB)

    def send_part_then_wait() -> bytes:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
            sock.sendall(_head("stalled", len(payload)) + payload[: 2 * MIB])
            got = b""
            try:
                while chunk := sock.recv(1 << 16):
                    got += chunk
            except ConnectionResetError:
                pass
            return got

    got = await _thread(reactor, send_part_then_wait)
    assert not got.startswith(b"HTTP/1.1 201")  # cut off (an abort says nothing)
    await wait_until(reactor, lambda: splicer.active_uploads == 0 and splicer.uploads_failed == 1, seconds=15)
    missing = await gateway.client.get("/api/v1/db/files/docs/stalled", headers=AUTH)
    assert missing.status == 404
    splicer.stall_timeout = 60.0
    ok = _payload(2 * MIB)
    status, stored = await _thread(reactor, lambda: _put(_port(gateway), "after", ok))
    assert status == 201 and stored["crc"] == zlib.crc32(ok)

