"""Operating-system resource exhaustion and connection floods, real sockets (session 20).

Each test runs a real ``python -m gateway run`` process, some of them with a low
``RLIMIT_NOFILE`` (as ``prlimit --nofile=N`` would set), and attacks it over loopback
the way one unauthenticated client could: idle sockets until ``accept`` fails with
``EMFILE``, request lines trickled one byte at a time.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import CouchBackend
from tests.reliability.conftest import GatewayProcess, basic_header, spawn_gateway


def _spawn(couch_backend: CouchBackend, logdir: Path, nofile: int | None = None,
           **env: str) -> GatewayProcess:
    return spawn_gateway(couch_backend.admin_url, logdir, nofile=nofile, **env)


def _exhaust(gateway: GatewayProcess, nofile: int, settle: float = 0.0) -> list[socket.socket]:
    """Open idle connections until the gateway has no descriptor left; return them.

    With ``settle``, wait that long (idle pooled upstream connections close after 4 s)
    and take the descriptors that freed too.
    """
    held: list[socket.socket] = []
    for _ in range(nofile + 50):
        held.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=5))
    if settle:
        time.sleep(settle)
        for _ in range(40):
            held.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=5))
    deadline = time.monotonic() + 10
    while gateway.fds() < nofile - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.fds() >= nofile - 1, (gateway.fds(), nofile)
    return held


def _keepalive_call(conn: http.client.HTTPConnection, method: str, path: str,
                    body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    answer = conn.getresponse()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()


NOFILE = 128


# --------------------------------------------------------------------------- slowloris

def test_a_request_line_trickled_byte_by_byte_is_cut_at_the_header_timeout(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """docs/rest-api.md: the head must arrive within WALLABY_HEADER_TIMEOUT, "slow-loris
    clients are dropped". The deadline starts only once the request line is complete
    (``GatewayRequest.__init__``) and the idle timeout restarts on every byte, so a client
    that trickles the request line itself (up to 16 KiB of it, a byte per
    ``idle_timeout - ε``) holds its connection and descriptor for days."""
    gateway = _spawn(couch_backend, tmp_path, WALLABY_HEADER_TIMEOUT="1",
                     WALLABY_IDLE_TIMEOUT="2")
    gateways.append(gateway)
    payloads = {
        "headers": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100,
        "request_line": b"GET /health" + b"a" * 100,
    }
    socks = {}
    for name, payload in payloads.items():
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
        # the complete request line at once for the control case, then a trickle
        first = payload.index(b"\r\n") + 2 if name == "headers" else 1
        sock.sendall(payload[:first])
        sock.setblocking(False)
        socks[name] = [sock, payload, first, None]
    begun = time.monotonic()
    while time.monotonic() - begun < 8 and any(v[3] is None for v in socks.values()):
        for entry in socks.values():
            sock, payload, sent, closed = entry
            if closed is not None:
                continue
            try:
                sock.recv(4096)  # an answer (408/400) or the end: the gateway cut it
                entry[3] = time.monotonic() - begun
                continue
            except BlockingIOError:
                pass
            except OSError:
                entry[3] = time.monotonic() - begun
                continue
            try:
                sock.send(payload[sent:sent + 1])
                entry[2] = sent + 1
            except OSError:
                entry[3] = time.monotonic() - begun
        time.sleep(0.5)
    for entry in socks.values():
        entry[0].close()
    headers_closed, line_closed = socks["headers"][3], socks["request_line"][3]
    # control: headers trickled after a complete request line are cut after ~1 s
    assert headers_closed is not None and headers_closed < 3, headers_closed
    assert line_closed is not None and line_closed < 3, (
        f"a request line trickled a byte every 0.5 s was still open after 8 s "
        f"({socks['request_line'][2]} bytes sent; header timeout 1 s, idle timeout 2 s)")


# --------------------------------------------------------------------------- EMFILE

@pytest.mark.parametrize("history", ["fresh", "after_a_spooled_body"])
def test_a_body_that_cannot_be_spooled_for_lack_of_descriptors_is_a_clean_503(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess], history: str,
) -> None:
    """With every descriptor taken by idle connections, a JSON body over 100 kB on an
    already open keep-alive connection cannot get its temporary file (EMFILE).

    Observed (fresh process): ``no_room`` (gateway/http/streaming.py) calls
    ``tempfile.gettempdir()``, which itself needs a descriptor the first time and raises
    ``FileNotFoundError``: Twisted's HTML "Processing Failed" 500 and a critical traceback.
    Once ``gettempdir`` is cached: 507 ``insufficient_storage`` "no room left" — the disk
    is fine. Expected: the JSON envelope, 503 with ``Retry-After`` (a transient shortage
    of the gateway's own, as docs/rest-api.md answers an unreachable upstream), no
    traceback."""
    gateway = _spawn(couch_backend, tmp_path, nofile=NOFILE)
    gateways.append(gateway)
    admin = basic_header(couch_backend.admin_username, couch_backend.admin_password)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    db = "fds_" + uuid.uuid4().hex[:10]
    status, _, _ = _keepalive_call(conn, "PUT", f"/api/v1/db/{db}", headers=admin)
    assert status in (201, 202)
    auth = {**admin, "Content-Type": "application/json"}
    body = json.dumps({"pad": "x" * 200_000}).encode()
    if history == "after_a_spooled_body":
        status, _, _ = _keepalive_call(conn, "PUT", f"/api/v1/db/{db}/docs/first", body, auth)
        assert status == 201
    held = _exhaust(gateway, NOFILE)
    try:
        status, headers, answer = _keepalive_call(
            conn, "PUT", f"/api/v1/db/{db}/docs/during", body, auth)
    finally:
        for sock in held:
            sock.close()
    logs = gateway.logs()
    assert headers.get("content-type", "").startswith("application/json"), (status, answer[:200])
    assert "Traceback" not in logs and '"critical"' not in logs
    assert status == 503, (status, answer[:200])
    assert "retry-after" in headers


def test_descriptor_exhaustion_is_not_reported_as_couchdb_unreachable(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """With its descriptors exhausted the gateway cannot open an upstream connection.
    Observed: every REST call on a kept-alive connection and ``/ready`` answer 503
    "CouchDB is unreachable (ConnectBindError)" and the log says "not ready: ... CouchDB
    is unreachable": the operator is sent to look at a healthy CouchDB. Expected: 503 that
    names the gateway's own limit (too many open files), and a log line that says so."""
    gateway = _spawn(couch_backend, tmp_path, nofile=NOFILE)
    gateways.append(gateway)
    admin = basic_header(couch_backend.admin_username, couch_backend.admin_password)
    ready_conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    rest_conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    assert _keepalive_call(ready_conn, "GET", "/ready")[0] == 200
    assert _keepalive_call(rest_conn, "GET", "/api/v1/db/nothing_here_x/docs/a",
                           headers=admin)[0] in (400, 404)
    held = _exhaust(gateway, NOFILE, settle=5.0)
    try:
        ready = _keepalive_call(ready_conn, "GET", "/ready")
        rest = _keepalive_call(rest_conn, "GET", "/api/v1/db/any_db/docs/a", headers=admin)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    logs = gateway.logs()
    for status, _, body in (ready, rest):
        assert status == 503, (status, body)
        reason = json.loads(body)["reason"]
        assert "CouchDB is unreachable" not in reason, reason
        assert "open files" in reason or "descriptor" in reason, reason
    assert "CouchDB is unreachable (ConnectBindError)" not in logs
    # and it does recover without a restart
    fresh = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    assert _keepalive_call(fresh, "GET", "/ready")[0] == 200


def test_descriptor_exhaustion_does_not_flood_the_log(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """Once its descriptors are exhausted, every connection attempt makes Twisted's
    EMFILE recovery write three info lines ("EMFILE encountered; releasing reserved file
    descriptor", "EMFILE recovery: Closed socket from …", "Re-reserving …"), unbounded:
    one unauthenticated loop of connect/close grew the log by ~700 KiB/s in the review
    (464 bytes per attempt). Expected: a bounded, aggregated warning (e.g. one line per
    interval with a count), as for any other refused connection."""
    gateway = _spawn(couch_backend, tmp_path, nofile=NOFILE)
    gateways.append(gateway)
    held = _exhaust(gateway, NOFILE)
    try:
        time.sleep(0.5)
        before = len(gateway.logs().splitlines())
        attempts = 1000
        for _ in range(attempts):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
            sock.close()
        time.sleep(1.0)
        grown = len(gateway.logs().splitlines()) - before
    finally:
        for sock in held:
            sock.close()
    assert grown <= 20, f"{grown} log lines for {attempts} refused connection attempts"
    summaries = [line for line in gateway.logs().splitlines()
                 if "could not accept connections" in line]
    assert summaries and "too many open files" in summaries[0], gateway.logs()[-2000:]
    assert '"level": "warn"' in summaries[0]
