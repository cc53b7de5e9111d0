"""A streamed upload still arriving when WALLABY_SHUTDOWN_GRACE ends: 503 shutting_down
(CouchDB applies no cut upload, so it may be sent again), nothing logged as critical."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading
from pathlib import Path

from tests.reliability.conftest import GatewayProcess, spawn_gateway
from tests.support.standin_http import JsonAnswers, serving

AUTH = "Basic " + base64.b64encode(b"u:p").decode()


class _CouchTakingUploadsSlowly(JsonAnswers):
    """A CouchDB (vendor Apache: uploads stream) that reads a PUT body as it comes."""

    upload_arrived = threading.Event()

    def do_GET(self) -> None:
        try:
            if self.path.startswith("/_session"):
                self.send_json(200, {"ok": True, "userCtx": {"name": "u", "roles": []}})
            elif self.path in ("/", ""):
                self.send_json(200, {"couchdb": "Welcome", "version": "3.3.3",
                                 "vendor": {"name": "The Apache Software Foundation"}})
            else:
                self.send_json(200, {"db_name": "d"})
        except OSError:
            pass

    def do_PUT(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            self.upload_arrived.set()
            got = 0
            while got < length:
                chunk = self.rfile.read(min(4096, length - got))
                if not chunk:
                    return
                got += len(chunk)
            self.send_json(201, {"ok": True, "id": "x", "rev": "2-b"})
        except OSError:
            pass


def test_a_streamed_upload_at_the_shutdown_deadline_gets_shutting_down(
        tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    _CouchTakingUploadsSlowly.upload_arrived.clear()
    with serving(_CouchTakingUploadsSlowly) as couch_port:
        gateway = spawn_gateway(f"http://svc:pw@127.0.0.1:{couch_port}", tmp_path,
                                WALLABY_SHUTDOWN_GRACE="1", WALLABY_REQUEST_TIMEOUT="60")
        gateways.append(gateway)
        port = int(gateway.url.rsplit(":", 1)[1].strip("/"))
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(
            b"PUT /api/v1/db/d/docs/x/attachments/a.bin?rev=1-a HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nAuthorization: " + AUTH.encode() + b"\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 1000)
        # the upload streams upstream, most of its body not sent yet
        assert _CouchTakingUploadsSlowly.upload_arrived.wait(20), "the upload did not reach CouchDB"
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
    out = gateway.out.read_text()
    access = [json.loads(line) for line in out.splitlines()
              if '"type": "access"' in line and "attachments" in line]
    assert access and access[0]["error"] == "shutting_down", (access, received[:300])
    assert received.startswith(b"HTTP/1.1 503"), received[:300]
    assert b"shutting_down" in received, received[:300]
    assert '"critical"' not in out, [line for line in out.splitlines() if "critical" in line][:3]
