"""with ``WALLABY_LOG_FORMAT=json`` every log event is one JSON object.

README, Configuration: ``WALLABY_LOG_FORMAT`` — "Access and service logs: ``json`` (one
object per line) or ``text``". ``python -m gateway run`` routes ``twisted.logger`` to that
observer, but the WebSocket layer (``gateway/ws/hub.py``, ``access.py``, ``resource.py``,
``tasks.py``) logs through the standard library's ``logging``, which nobody configures:
its warnings and errors reach stderr through ``logging.lastResort`` as bare text (no
time, no level, tracebacks over many lines), whatever the format.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import GatewayProcess, spawn_gateway
from tests.support.standin_http import JsonAnswers, serving

#: What ``python -m gateway run`` itself prints on stderr at start (a console banner,
#: and the ``READY <port>`` line the test harness waits for).
_BANNER = ("Wallaby Gateway listening on ", "Upstream CouchDB: ", "Demo page: ", "READY ")


def ws_open(port: int, headers: dict[str, str]) -> socket.socket:
    """A WebSocket handshake on a raw socket (RFC 6455, no extensions)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /api/v1/changes HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def ws_send(sock: socket.socket, message: dict[str, object]) -> None:
    data = json.dumps(message).encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    header += bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def _exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def ws_recv(sock: socket.socket) -> tuple[int, bytes]:
    """One frame: (opcode, payload)."""
    first, second = _exact(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(_exact(sock, 2), "big")
    elif length == 127:
        length = int.from_bytes(_exact(sock, 8), "big")
    return first & 0x0F, _exact(sock, length)


class _DeletedDatabaseCouch(JsonAnswers):
    """A CouchDB whose database is deleted once the live feed opens: every GET answers
    as CouchDB would, except the continuous ``_changes`` request, which is a 404 (the
    feed stops for good, as after ``DELETE /db`` on CouchDB)."""

    def do_GET(self) -> None:
        if self.path.startswith("/_session"):
            self.send_json(200, {"ok": True, "userCtx": {"name": "u", "roles": []}})
        elif self.path.startswith("/_up"):
            self.send_json(200, {"status": "ok"})
        elif "_changes" in self.path and "feed=continuous" in self.path:
            self.send_json(404, {"error": "not_found", "reason": "Database does not exist."})
        elif "_changes" in self.path:
            self.send_json(200, {"results": [], "last_seq": "0"})
        else:
            self.send_json(200, {"db_name": "x", "update_seq": "0", "doc_count": 0})

    do_POST = do_GET  # noqa: N815 - BaseHTTPRequestHandler's name


def log_events_on_stderr(gateway: GatewayProcess) -> list[str]:
    """stderr lines that are neither the start-up banner nor empty."""
    return [line for line in gateway.err.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith(_BANNER)]


def test_a_shared_feed_that_stops_is_logged_as_json_not_bare_text_on_stderr(
        tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    """A subscriber's database is deleted: the shared feed stops for good. Observed on
    stderr, beside the JSON log on stdout: the bare line ``feed f1 on x stopped: 404
    not_found: Database does not exist.`` (``hub.py`` ``_on_error``, stdlib
    ``logging.warning``), with no time and no level; the same path logs ``access re-check``
    errors, ``websocket handshake check failed: <traceback>`` and ``websocket task failed:
    <traceback>`` (multi-line) the same way. Expected: every log event through the
    configured JSON observer (one object per line), nothing but the banner on stderr."""
    with serving(_DeletedDatabaseCouch) as couch_port:
        gateway = spawn_gateway(f"http://svc:pw@127.0.0.1:{couch_port}", tmp_path)
        gateways.append(gateway)
        sock = ws_open(gateway.port, {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()})
        try:
            ws_send(sock, {"type": "subscribe", "id": "s", "db": "x", "since": 0})
            assert json.loads(ws_recv(sock)[1])["type"] == "subscribed"
            error = json.loads(ws_recv(sock)[1])
            assert error["type"] == "error" and error["error"] == "not_found", error
        finally:
            sock.close()
        time.sleep(0.5)
        gateway.stop()
    stray = log_events_on_stderr(gateway)
    assert not stray, stray
    for line in gateway.out.read_text(errors="replace").splitlines():
        json.loads(line)  # stdout: one JSON object per line (this part holds today)


def test_the_missing_service_credentials_warning_is_a_json_log_event(
        couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    """``COUCHDB_URL`` without credentials and no ``COUCHDB_USER``: the gateway warns that
    live changes will be refused (``service_refused``). Observed: ``wallaby: warning: no
    service credentials …`` written straight to stderr as text, outside the JSON log — a
    JSON log pipeline (the compose deployment's ``docker logs``) never sees the one
    warning that explains every later ``service_refused``. Expected: a JSON event with
    level ``warn`` on the log stream."""
    env = {k: "" for k in ("COUCHDB_USER", "COUCHDB_PASSWORD") if k in os.environ}
    gateway = spawn_gateway(couch_backend.url, tmp_path, **env)
    gateways.append(gateway)
    gateway.stop()
    stray = log_events_on_stderr(gateway)
    events = [json.loads(line) for line in gateway.out.read_text(errors="replace").splitlines()]
    warned = [e for e in events if e.get("level") == "warn" and "COUCHDB_USER" in e.get("message", "")]
    assert warned and not stray, (stray, warned)
