"""A streamed upload still arriving when WALLABY_SHUTDOWN_GRACE ends: 503 shutting_down
(CouchDB applies no cut upload, so it may be sent again), nothing logged as critical."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from tests.reliability.conftest import GatewayProcess, spawn_gateway

AUTH = "Basic " + base64.b64encode(b"u:p").decode()


class _CouchTakingUploadsSlowly(http.server.BaseHTTPRequestHandler):
    """A CouchDB (vendor Apache: uploads stream) that reads a PUT body as it comes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        try:
            if self.path.startswith("/_session"):
                self._json(200, {"ok": True, "userCtx": {"name": "u", "roles": []}})
            elif self.path in ("/", ""):
                self._json(200, {"couchdb": "Welcome", "version": "3.3.3",
                                 "vendor": {"name": "The Apache Software Foundation"}})
            else:
                self._json(200, {"db_name": "d"})
        except OSError:
            pass

    def do_PUT(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            got = 0
            while got < length:
                chunk = self.rfile.read(min(4096, length - got))
                if not chunk:
                    return
                got += len(chunk)
            self._json(201, {"ok": True, "id": "x", "rev": "2-b"})
        except OSError:
            pass


def test_a_streamed_upload_at_the_shutdown_deadline_gets_shutting_down(
        tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    couch = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CouchTakingUploadsSlowly)
    couch.daemon_threads = True
    threading.Thread(target=couch.serve_forever, daemon=True).start()
    try:
        gateway = spawn_gateway(f"http://svc:pw@127.0.0.1:{couch.server_address[1]}", tmp_path,
                                WALLABY_SHUTDOWN_GRACE="1", WALLABY_REQUEST_TIMEOUT="60")
        gateways.append(gateway)
        port = int(gateway.url.rsplit(":", 1)[1].strip("/"))
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(
            b"PUT /api/v1/db/d/docs/x/attachments/a.bin?rev=1-a HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nAuthorization: " + AUTH.encode() + b"\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 1000)
        time.sleep(1.0)  # the upload streams upstream, most of its body not sent yet
        os.kill(gateway.process.pid, signal.SIGTERM)
        received = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except OSError as exc:
            received += repr(exc).encode()
        sock.close()
        gateway.process.wait(20)
    finally:
        couch.shutdown()
    out = gateway.out.read_text()
    access = [json.loads(line) for line in out.splitlines()
              if '"type": "access"' in line and "attachments" in line]
    assert access and access[0]["error"] == "shutting_down", (access, received[:300])
    assert received.startswith(b"HTTP/1.1 503"), received[:300]
    assert b"shutting_down" in received, received[:300]
    assert '"critical"' not in out, [line for line in out.splitlines() if "critical" in line][:3]
