"""Secrets never appear in logs, error bodies, headers or metrics.

A ``python -m gateway run`` process (service credentials in ``COUCHDB_URL``) goes through a
full scenario — logins with right and wrong passwords, Basic, bearer and cookie requests
(valid, forged, tampered), ``?token=`` on REST and WebSocket, malformed bodies that contain
passwords, errors, ``/ready``, ``/metrics``, a WebSocket subscription, logout, SIGTERM —
in both log formats. Everything captured (stdout/stderr logs, every response's headers and
body except the login answer to its own client, the metrics text) is scanned for the service
password, every user password, every Basic credential, every AuthSession value and every
bearer token used. The logs of every other gateway process this session started are
scanned for the service password as well.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CouchBackend
from tests.reliability.conftest import (
    SPAWNED,
    Answer,
    Couch,
    GatewayProcess,
    basic_header,
    http,
    record,
    spawn_gateway,
)


def ws_exchange(port: int, path: str, headers: dict[str, str], messages: list[dict[str, Any]],
                read_frames: int = 2, timeout: float = 10) -> tuple[bytes, list[bytes]]:
    """A minimal RFC 6455 client: handshake, send masked text frames, read a few frames."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             *(f"{k}: {v}" for k, v in headers.items())]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return head, []
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            return head + b"\r\n\r\n" + rest, []
        for message in messages:
            payload = json.dumps(message).encode()
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            header = bytes([0x81]) + (bytes([0x80 | len(payload)]) if len(payload) < 126
                                      else bytes([0x80 | 126]) + struct.pack("!H", len(payload)))
            sock.sendall(header + mask + masked)
        frames: list[bytes] = []
        buffer = rest
        while len(frames) < read_frames:
            while len(buffer) < 2 or len(buffer) < _frame_length(buffer):
                chunk = sock.recv(65536)
                if not chunk:
                    return head, frames
                buffer += chunk
            size = _frame_length(buffer)
            frames.append(_frame_payload(buffer[:size]))
            buffer = buffer[size:]
        return head, frames
    finally:
        sock.close()


def _frame_length(buffer: bytes) -> int:
    if len(buffer) < 2:
        return 2
    length = buffer[1] & 0x7F
    if length == 126:
        return 4 + (struct.unpack("!H", buffer[2:4])[0] if len(buffer) >= 4 else 0)
    if length == 127:
        return 10 + (struct.unpack("!Q", buffer[2:10])[0] if len(buffer) >= 10 else 0)
    return 2 + length


def _frame_payload(frame: bytes) -> bytes:
    length = frame[1] & 0x7F
    start = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return frame[start:]


class Capture:
    """Every response seen, as bytes to scan."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []
        self.requests = 0

    def add(self, what: str, answer: Answer) -> Answer:
        self.requests += 1
        headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.items()).encode()
        self.parts.append((what, headers + b"\n\n" + answer.body))
        return answer


def _scenario(gateway: GatewayProcess, couch: Couch, db: str, member: tuple[str, str],
              other: tuple[str, str], capture: Capture) -> list[str]:
    """Drive the gateway; return the token values that must stay secret."""
    url = gateway.url
    name, password = member
    secrets: list[str] = []

    def call(what: str, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, raw: bytes | None = None) -> Answer:
        return capture.add(what, http(method, url + path, body, headers, raw=raw))

    # the login answer carries its own client's token and cookie: kept out of the scan
    login = http("POST", url + "/api/v1/session", {"name": name, "password": password})
    assert login.status == 200, login
    token = login.json["token"]
    cookie_header = login.headers.get("Set-Cookie", "")
    cookie_value = cookie_header.split(";", 1)[0].split("=", 1)[1]
    secrets += [token, cookie_value]
    other_login = http("POST", url + "/api/v1/session", {"name": other[0], "password": other[1]})
    secrets.append(other_login.json["token"])
    for wrong in (password + "x", "", other[1], password.upper()):
        call("wrong login", "POST", "/api/v1/session", {"name": name, "password": wrong})
    call("unknown user", "POST", "/api/v1/session", {"name": "nobody-" + password, "password": password})
    call("malformed login", "POST", "/api/v1/session",
         raw=b'{"name": "' + name.encode() + b'", "password": "' + password.encode() + b'"')
    call("login extra field", "POST", "/api/v1/session",
         {"name": name, "password": password, "otp": password})
    forged = [uuid.uuid4().hex, token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
              "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."]
    secrets += forged
    good = [
        ("basic", basic_header(name, password)),
        ("bearer", {"Authorization": f"Bearer {token}"}),
        ("cookie", {"Cookie": f"wallaby_session={cookie_value}"}),
    ]
    bad = [("bearer forged", {"Authorization": f"Bearer {f}"}) for f in forged]
    bad += [("cookie forged", {"Cookie": f"wallaby_session={f}"}) for f in forged]
    bad += [("basic wrong", basic_header(name, password + "x")),
            ("basic other db", basic_header(*other))]
    for label, headers in good + bad:
        call(label, "GET", "/api/v1/session", headers=headers)
        call(label, "GET", f"/api/v1/db/{db}", headers=headers)
        call(label, "PUT", f"/api/v1/db/{db}/docs/d-{uuid.uuid4().hex[:6]}", {"v": 1}, headers)
        call(label, "GET", f"/api/v1/db/{db}/docs/missing", headers=headers)
        call(label, "GET", f"/api/v1/db/{db}/docs/_bad", headers=headers)
        call(label, "POST", f"/api/v1/db/{db}/find", {"selector": {"$bad": 1}}, headers)
        call(label, "POST", f"/api/v1/db/{db}/docs", headers=headers,
             raw=b'{"password": "' + password.encode() + b'", broken')
        call(label, "GET", f"/api/v1/db/{db}/all_docs?token={token}&password={password}",
             headers=headers)
        call(label, "GET", "/api/v1/db/_users/docs/org.couchdb.user:" + name, headers=headers)
        call(label, "GET", "/_config", headers=headers)
    call("query token", "GET", f"/api/v1/db/{db}?token={token}")
    call("ready", "GET", "/ready")
    call("health", "GET", "/health")
    # WebSocket: ?token= (logged path must not keep it), bearer, forged
    for n, (path, headers) in enumerate((
                          (f"/api/v1/changes?token={token}", {}),
                          ("/api/v1/changes", {"Authorization": f"Bearer {token}"}),
                          ("/api/v1/changes", {"Cookie": f"wallaby_session={cookie_value}"}),
                          (f"/api/v1/changes?token={forged[0]}", {}),
                          ("/api/v1/changes", basic_header(name, password + "x")))):
        head, frames = ws_exchange(gateway.port, path, headers, [
            {"type": "subscribe", "id": "s", "db": db},
            {"type": "subscribe", "id": "t", "db": "nope_" + uuid.uuid4().hex[:6]},
        ])
        if n < 3:  # valid credentials: a live subscription
            assert head.startswith(b"HTTP/1.1 101") and b'"subscribed"' in b"".join(frames), head
        elif n == 4:  # the wrong password: locked out by the "basic wrong" guesses above
            assert head.startswith(b"HTTP/1.1 429"), head
        else:
            assert head.startswith(b"HTTP/1.1 401"), head
        capture.parts.append((f"ws {path[:40]}", head + b"\n" + b"\n".join(frames)))
        capture.requests += 1
    metrics = call("metrics", "GET", "/metrics")
    assert metrics.status == 200 and b"wallaby_http_requests_total" in metrics.body
    call("logout", "DELETE", "/api/v1/session", headers={"Cookie": f"wallaby_session={cookie_value}"})
    return secrets


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_in_logs_bodies_headers_or_metrics(
    couch: Couch, couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
    log_format: str,
) -> None:
    gateway = spawn_gateway(couch_backend.admin_url, tmp_path, WALLABY_LOG_FORMAT=log_format)
    gateways.append(gateway)
    member, other = couch.new_user(), couch.new_user()
    db = couch.new_db(members=[member[0]])
    capture = Capture()
    try:
        tokens = _scenario(gateway, couch, db, member, other, capture)
    finally:
        gateway.stop()  # SIGTERM: the shutdown path logs too
        couch.delete_db(db)
    service_password = couch_backend.admin_password
    secrets = {
        "service password": service_password,
        "service Basic credential": base64.b64encode(
            f"{couch_backend.admin_username}:{service_password}".encode()).decode(),
        "service URL with credentials": couch_backend.admin_url,
        "member password": member[1], "other password": other[1],
        "member Basic credential": base64.b64encode(f"{member[0]}:{member[1]}".encode()).decode(),
    }
    for n, value in enumerate(tokens):
        secrets[f"token/cookie #{n}"] = value
    logs = gateway.logs()
    assert "access" in logs or log_format == "text"
    assert len(logs) > 1000, "the gateway logged almost nothing"
    haystacks = [("gateway logs", logs.encode()), *capture.parts]
    found = [f"{label} in {where}" for where, data in haystacks
             for label, value in secrets.items() if value and value.encode() in data]
    record("secrets", f"full_scenario_{log_format}_logs", requests_scanned=capture.requests,
           log_bytes=len(logs), secrets_checked=len(secrets), leaks=len(found),
           passed=not found)
    assert not found, "\n".join(found[:20])


def test_zz_no_service_password_in_any_gateway_log_of_this_session(
    couch_backend: CouchBackend,
) -> None:
    """Every gateway process the reliability suite started (faults, fuzzing, attacks …)."""
    if not SPAWNED:
        pytest.skip("no gateway process was started in this session")
    password = couch_backend.admin_password.encode()
    scanned = 0
    leaks = []
    for child in SPAWNED:
        for path in (child.out, child.err):
            if path.exists():
                data = path.read_bytes()
                scanned += len(data)
                if password in data:
                    leaks.append(str(path))
    record("secrets", "all_gateway_logs_of_session", processes=len(SPAWNED), bytes_scanned=scanned,
           leaks=len(leaks), passed=not leaks)
    assert not leaks, leaks
