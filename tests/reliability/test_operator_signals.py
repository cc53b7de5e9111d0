"""signals an operator (or a terminal, or a supervisor) sends the gateway.

``gateway/__main__.py``: "SIGTERM or Ctrl-C first closes every WebSocket (a ``closing``
message with the resume seqs, then close code 1001) …"; docs/deployment.md describes the
same graceful sequence for SIGTERM.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, GatewayProcess, spawn_gateway
from tests.reliability.test_operator_logs import ws_open, ws_recv, ws_send
from tests.support.standin_http import JsonAnswers, serving


def test_sighup_does_not_kill_the_gateway_without_its_graceful_shutdown(
        couch_backend: CouchBackend, couch: Couch, tmp_path: Path,
        gateways: list[GatewayProcess]) -> None:
    """SIGHUP (the terminal of ``./wallaby run`` closing, an ssh session dropping, or an
    operator's habitual ``kill -HUP`` to "reload") has no handler: the default action
    kills the process at once (exit status -1). Every WebSocket is cut without its
    ``closing`` message and resume seqs, in-flight requests are cut, nothing is logged.
    Expected: either ignored (still serving) or the same graceful shutdown as SIGTERM
    (``closing`` + 1001 to subscribers, exit 0); the gateway does the latter."""
    gateway = spawn_gateway(couch_backend.admin_url, tmp_path)
    gateways.append(gateway)
    db = couch.new_db()
    auth = base64.b64encode(
        f"{couch_backend.admin_username}:{couch_backend.admin_password}".encode()).decode()
    sock = ws_open(gateway.port, {"Authorization": f"Basic {auth}"})
    ws_send(sock, {"type": "subscribe", "id": "s", "db": db, "since": 0})
    assert json.loads(ws_recv(sock)[1])["type"] == "subscribed"
    os.kill(gateway.process.pid, signal.SIGHUP)
    # The gateway shuts down as on SIGTERM (the choice made over ignoring SIGHUP): read
    # what it sends until it closes, then wait for its exit (it may wait up to
    # WALLABY_SHUTDOWN_GRACE for a close handshake this raw socket never answers).
    frames: list[tuple[int, bytes]] = []
    try:
        while True:
            frames.append(ws_recv(sock))
    except (ConnectionError, OSError):
        pass
    sock.close()
    code = gateway.process.wait(20)
    texts = [json.loads(payload) for opcode, payload in frames if opcode == 1]
    assert code == 0 and any(t.get("type") == "closing" for t in texts), (code, frames)


class _SlowCouch(JsonAnswers):
    """Answers at once, except a database named ``slow``, which takes 30 s."""

    slow_request_arrived = threading.Event()

    def do_GET(self) -> None:
        try:
            if self.path.startswith("/_session"):
                self.send_json(200, {"ok": True, "userCtx": {"name": "u", "roles": []}})
                return
            if self.path.startswith("/slow"):
                self.slow_request_arrived.set()
                time.sleep(30)
            self.send_json(200, {"db_name": "slow", "doc_count": 0})
        except OSError:
            pass


def test_a_request_cut_at_the_shutdown_deadline_is_not_blamed_on_couchdb(
        tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    """A request still waiting for CouchDB when ``WALLABY_SHUTDOWN_GRACE`` runs out: the
    gateway closes its upstream pool, and the client gets ``503 upstream_unavailable``
    "CouchDB is unreachable (ResponseNeverReceived)" with ``Retry-After``; the access log
    and ``wallaby_errors_total`` say ``upstream_unavailable`` too. CouchDB was fine: the
    gateway itself cut the call, and an operator reading the logs of a rolling restart
    is sent to look at CouchDB. Other runs of the same race: the connection is closed
    with no answer, and the access line says ``"status": 200, "aborted": true, "error":
    null`` — a 200 that never left. Expected: the gateway's own ``503 shutting_down``
    (and an access line that says ``shutting_down`` either way)."""
    _SlowCouch.slow_request_arrived.clear()
    with serving(_SlowCouch) as couch_port:
        gateway = spawn_gateway(f"http://svc:pw@127.0.0.1:{couch_port}", tmp_path,
                                WALLABY_SHUTDOWN_GRACE="1", WALLABY_REQUEST_TIMEOUT="60")
        gateways.append(gateway)
        answer: dict[str, Any] = {}

        def call() -> None:
            request = urllib.request.Request(
                gateway.url + "/api/v1/db/slow",
                headers={"Authorization": "Basic " + base64.b64encode(b"u:p").decode()})
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    answer.update(status=reply.status, body=json.loads(reply.read()))
            except urllib.error.HTTPError as exc:
                answer.update(status=exc.code, body=json.loads(exc.read()))
            except OSError as exc:  # cut with no answer at all
                answer.update(cut=repr(exc))

        caller = threading.Thread(target=call)
        caller.start()
        assert _SlowCouch.slow_request_arrived.wait(20), "the request did not reach CouchDB"
        os.kill(gateway.process.pid, signal.SIGTERM)
        caller.join(20)
        gateway.process.wait(20)
    access = [json.loads(line) for line in gateway.out.read_text().splitlines()
              if '"type": "access"' in line and "/api/v1/db/slow" in line]
    # Whether the client got an answer or only a closed connection, the access line
    # must say why (today: "upstream_unavailable", or status 200 with no error at all).
    assert access and access[0]["error"] == "shutting_down", (access, answer)
    if "status" in answer:
        assert (answer["status"], answer["body"]["error"]) == (503, "shutting_down"), answer


class _TricklingCouch(JsonAnswers):
    """Sends an attachment's head and its first bytes, then nothing for 30 s."""

    def do_GET(self) -> None:
        try:
            if self.path.startswith("/_session"):
                self.send_json(200, {"ok": True, "userCtx": {"name": "u", "roles": []}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "100000")
            self.send_header("ETag", '"abc"')
            self.end_headers()
            self.wfile.write(b"x" * 100)
            self.wfile.flush()
            time.sleep(30)
        except OSError:
            pass


def test_a_download_cut_at_the_shutdown_deadline_says_so_in_its_access_line(
        tmp_path: Path, gateways: list[GatewayProcess]) -> None:
    """Its head (200) has left when ``WALLABY_SHUTDOWN_GRACE`` runs out: the gateway cuts
    the connection, and the access line says ``aborted`` with the error
    ``shutting_down``, not a bare 200 or a CouchDB failure."""
    with serving(_TricklingCouch) as couch_port:
        gateway = spawn_gateway(f"http://svc:pw@127.0.0.1:{couch_port}", tmp_path,
                                WALLABY_SHUTDOWN_GRACE="1", WALLABY_REQUEST_TIMEOUT="60")
        gateways.append(gateway)
        request = urllib.request.Request(
            gateway.url + "/api/v1/db/d/docs/x/attachments/a.bin",
            headers={"Authorization": "Basic " + base64.b64encode(b"u:p").decode()})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 200
            assert reply.read(100) == b"x" * 100
            os.kill(gateway.process.pid, signal.SIGTERM)
            try:
                rest = reply.read()
            except (OSError, http.client.HTTPException):
                rest = b""
            assert len(rest) < 100000 - 100
        gateway.process.wait(20)
    access = [json.loads(line) for line in gateway.out.read_text().splitlines()
              if '"type": "access"' in line and "attachments" in line]
    assert len(access) == 1, access
    assert (access[0]["status"], access[0]["aborted"], access[0]["error"]) == (
        200, True, "shutting_down"), access
    assert '"critical"' not in gateway.out.read_text()
