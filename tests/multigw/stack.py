"""Several gateway processes behind a real HAProxy, on loopback (session 20).

The HAProxy configuration is the shipped ``deploy/haproxy.cfg``, rewritten only where a
container setup cannot work on a bare host: Docker's resolvers go, the listen addresses
and the ``server`` lines point at the gateway processes on 127.0.0.1. Every other line
(``option forwardfor``, ``X-Forwarded-Proto``, ``/ready`` checks every 3 s, fall 2,
``timeout tunnel 1h``, ``balance leastconn``) is what the docs recommend.

Clients are plain blocking sockets (``http.client`` and a minimal RFC 6455 client), so a
test can pick the *source address* of its connection (127.0.0.5, 127.0.0.6, …): behind
the proxy, that is the client address the gateway should see.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.gatewayproc import ROOT, GatewayProcess

_READY = re.compile(r"^READY (\d+)$", re.MULTILINE)


def compose_value(name: str) -> str:
    """A value the cluster profile sets (docker-compose.yml), ``${VAR:-default}`` resolved."""
    compose = (ROOT / "docker-compose.yml").read_text()
    found = re.search(rf"{name}:\s*(\S+)", compose)
    assert found, f"the cluster profile sets {name}"
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", found.group(1)).strip('"')


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Gateway(GatewayProcess):
    """A gateway process with a name (its ``server`` line in HAProxy's configuration)."""

    name: str = ""

    def alive(self) -> bool:
        return self.process.poll() is None


def start_gateway(name: str, couchdb_url: str, workdir: Path, env: Mapping[str, str] = (),
                  port: int = 0, timeout: float = 30.0) -> Gateway:
    """``python -m gateway run`` with ``COUCHDB_URL``; waits for its ``READY`` line."""
    log = workdir / f"{name}-{os.urandom(3).hex()}.log"
    environment = {**os.environ, "COUCHDB_URL": couchdb_url, "WALLABY_LOG_FORMAT": "json",
                   "PYTHONUNBUFFERED": "1", **dict(env)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        found = _READY.search(text)
        if found:
            return Gateway(process, int(found.group(1)), log, name=name)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"gateway {name} did not start:\n{text}")
        time.sleep(0.05)


def stop_processes(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM them all at once (each drains in parallel), SIGKILL any left after ``grace``."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for process in processes:
        process.wait()


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        if process is not None:
            process.wait()
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def haproxy_config(servers: Mapping[str, int], *, port: int, health_port: int,
                   source: str | None = None, stats_socket: Path | None = None,
                   backend_extra: str = "", edits: Mapping[str, str] = ()) -> str:
    """``deploy/haproxy.cfg`` for loopback: the same settings, local addresses."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    for old, new in dict(edits).items():
        assert old in text, old
        text = text.replace(old, new)
    text = re.sub(r"\nresolvers docker\n(?:    .*\n)+", "\n", text)
    text = text.replace(" resolvers docker", "")
    text = text.replace("init-addr last,libc,none ", "")
    # The container's limit; a test host may not let HAProxy raise its fd limit that far.
    text = text.replace("maxconn 20000", "maxconn 2000")
    text = text.replace("bind 127.0.0.1:8405", f"bind 127.0.0.1:{health_port}")
    text = text.replace("bind :8080", f"bind 127.0.0.1:{port}")
    lines = [line for line in text.splitlines() if not re.match(r"\s+server gateway-\d", line)]
    text = "\n".join(lines) + "\n"
    server_lines = "".join(
        f"    server {name} 127.0.0.1:{gw_port}" + (f" source {source}" if source else "") + "\n"
        for name, gw_port in servers.items())
    assert text.rstrip().rsplit("\nbackend ", 1)[1].startswith("gateways"), \
        "backend gateways is the configuration's last section"
    text = text.rstrip("\n") + "\n" + backend_extra + server_lines
    if stats_socket is not None:
        text = text.replace("global\n", f"global\n    stats socket {stats_socket} level admin\n", 1)
    return text


@dataclass
class HAProxy:
    process: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    stats_socket: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def wait_up(self, timeout: float = 20.0) -> None:
        """Until every gateway is UP again (a busy pouchdb-server can fail /ready checks)."""
        deadline = time.monotonic() + timeout
        while any(state != "UP" for state in self.server_states().values()):
            assert time.monotonic() < deadline, self.server_states()
            time.sleep(0.2)

    def server_states(self) -> dict[str, str]:
        """``{server name: UP/DOWN/MAINT...}`` from the stats CSV."""
        csv = self.command("show stat")
        header = csv.splitlines()[0].lstrip("# ").split(",")
        states = {}
        for line in csv.splitlines()[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "gateways" and row.get("svname") not in ("BACKEND", "FRONTEND"):
                states[row["svname"]] = row["status"]
        return states


def start_haproxy(servers: Mapping[str, int], workdir: Path, *, source: str | None = None,
                  backend_extra: str = "", edits: Mapping[str, str] = ()) -> HAProxy:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        import pytest

        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    port = free_port()
    stats = workdir / f"haproxy-{os.urandom(3).hex()}.sock"
    config = workdir / f"haproxy-{os.urandom(3).hex()}.cfg"
    config.write_text(haproxy_config(servers, port=port, health_port=free_port(), source=source,
                                     stats_socket=stats, backend_extra=backend_extra,
                                     edits=edits))
    log = config.with_suffix(".log")
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-db", "-f", str(config)],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            if stats.exists():
                return HAProxy(process, port, config, log, stats)
        time.sleep(0.05)
    process.kill()
    raise AssertionError("haproxy did not start:\n" + log.read_text())


# -- HTTP ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def headers_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, method: str, path: str, *, headers: Mapping[str, str] = (),
            body: Any = None, source: str | None = None, timeout: float = 20.0) -> Answer:
    """One request on a fresh connection from ``source`` (an address on loopback)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout,
        source_address=(source, 0) if source else None)
    try:
        data = None
        sent = dict(headers)
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        payload = response.read()
        return Answer(response.status, list(response.getheaders()), payload)
    finally:
        connection.close()


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def admin_call(couch_url: str, admin: tuple[str, str], method: str, path: str,
               body: Any = None) -> Answer:
    _host, _, port = couch_url.split("://", 1)[1].partition(":")
    return request(int(port), method, path, headers=basic(*admin), body=body)


def metric(port: int, name: str) -> float:
    text = request(port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


# -- WebSocket -------------------------------------------------------------------------


class WebSocketClosed(Exception):
    pass


@dataclass
class WsClient:
    """A minimal blocking RFC 6455 client (text frames, masking, ping/pong/close)."""

    sock: socket.socket
    status: int
    response_headers: dict[str, str]
    buffer: bytes = b""
    closed: tuple[int, str] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def connect(cls, port: int, path: str = "/api/v1/changes", *,
                headers: Mapping[str, str] = (), source: str | None = None,
                timeout: float = 10.0) -> WsClient:
        sock = socket.create_connection(("127.0.0.1", port), timeout,
                                        source_address=(source, 0) if source else None)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in dict(headers).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise WebSocketClosed(f"closed during the handshake: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        response_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        client = cls(sock, status, response_headers, rest)
        return client

    def send_json(self, message: Any) -> None:
        self._send(0x1, json.dumps(message).encode())

    def _send(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WebSocketClosed("connection closed without a close frame")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next JSON message (answers pings, raises on close)."""
        deadline = time.monotonic() + timeout
        while True:
            first, second = self._read(2, deadline)
            opcode = first & 0x0F
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2, deadline))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8, deadline))[0]
            payload = self._read(length, deadline)
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.closed = (code, payload[2:].decode(errors="replace"))
                with contextlib.suppress(OSError):
                    self._send(0x8, payload[:2])
                raise WebSocketClosed(f"closed {self.closed}")
            message = json.loads(payload)
            self.messages.append(message)
            return message

    def receive_until(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if predicate(message):
                return message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, struct.pack("!H", 1000))
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def closing_all(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in things:
            with contextlib.suppress(Exception):
                thing.close()
