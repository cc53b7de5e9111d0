"""The demo page (served at ``/``) in a real headless Chromium, against the real entry
point ``python -m gateway run``: live edits between two pages, and resume after the
gateway process is stopped and started again (every change made while it was down shows
up)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.embedded import free_port
from tests.conftest import CouchBackend

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.browser


def _call(backend: CouchBackend, method: str, path: str, body: Any = None) -> Any:
    token = base64.b64encode(f"{backend.admin_username}:{backend.admin_password}".encode()).decode()
    request = urllib.request.Request(
        backend.url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # loopback test server
        return json.loads(answer.read())


def _start_gateway(backend: CouchBackend, port: int, **settings: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WALLABY_") and k not in ("COUCHDB_USER", "COUCHDB_PASSWORD")}
    env.update(COUCHDB_URL=backend.admin_url, WALLABY_PORT=str(port),
               WALLABY_LOG_FORMAT="text", WALLABY_SHUTDOWN_GRACE="2",
               WALLABY_WS_PING_INTERVAL="5", **settings)
    process = subprocess.Popen(  # fixed argv
        [sys.executable, "-m", "gateway", "run"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline().decode(errors="replace")
        if line.startswith("READY"):
            return process
        if not line and process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("gateway did not start")


def _stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM (graceful), SIGKILL after 15 s; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def test_two_pages_live_and_resume_after_gateway_restart(couch_backend: CouchBackend) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    db = f"demo_{uuid.uuid4().hex[:10]}"
    user, password = f"user_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    _call(couch_backend, "PUT", f"/_users/org.couchdb.user:{user}",
          {"name": user, "password": password, "type": "user", "roles": []})
    _call(couch_backend, "PUT", f"/{db}")
    _call(couch_backend, "PUT", f"/{db}/_security", {"members": {"names": [user], "roles": []}})
    port = free_port()
    gateway = _start_gateway(couch_backend, port)
    node = subprocess.Popen(
        ["node", str(ROOT / "tests/browser/demo_two_pages.mjs"), f"http://127.0.0.1:{port}",
         db, user, password],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    try:
        line = node.stdout.readline().strip()
        assert line == "RESTART", line
        gateway.kill()  # no graceful close: the pages must notice and reconnect alone
        gateway.wait(15)
        added = []
        for i in range(3):  # written while the gateway is down
            title = f"while down {i}"
            _call(couch_backend, "PUT", f"/{db}/down{i}",
                  {"title": title, "done": False, "created": f"2099-01-0{i + 1}"})
            added.append(title)
        gateway = _start_gateway(couch_backend, port)
        node.stdin.write("RESTARTED " + json.dumps(added) + "\n")
        node.stdin.flush()
        result = node.stdout.readline().strip()
        assert result == "OK", result
        assert node.wait(30) == 0
        assert _stop(gateway) == 0
    finally:
        if node.poll() is None:
            node.kill()
        _stop(gateway)
        _call(couch_backend, "DELETE", f"/{db}")


def test_expired_session_asks_to_log_in_again_and_resumes(couch_backend: CouchBackend) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    db = f"demo_{uuid.uuid4().hex[:10]}"
    user, password = f"user_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    user_doc = {"name": user, "password": password, "type": "user", "roles": []}
    created = _call(couch_backend, "PUT", f"/_users/org.couchdb.user:{user}", user_doc)
    _call(couch_backend, "PUT", f"/{db}")
    _call(couch_backend, "PUT", f"/{db}/_security", {"members": {"names": [user], "roles": []}})
    port = free_port()
    gateway = _start_gateway(couch_backend, port, WALLABY_WS_AUTH_RECHECK="0.5")
    node = subprocess.Popen(
        ["node", str(ROOT / "tests/browser/demo_session_expiry.mjs"), f"http://127.0.0.1:{port}",
         db, user, password],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    try:
        assert node.stdout.readline().strip() == "SUBSCRIBED"
        # The user's session ends (the account is removed): every cookie of it is dead.
        _call(couch_backend, "DELETE", f"/_users/org.couchdb.user:{user}?rev={created['rev']}")
        line = node.stdout.readline().strip()
        assert line == "LOGGED_OUT", line
        _call(couch_backend, "PUT", f"/{db}/meanwhile",
              {"title": "while logged out", "done": False, "created": "2099-01-01"})
        _call(couch_backend, "PUT", f"/_users/org.couchdb.user:{user}", user_doc)
        node.stdin.write("RELOGIN " + json.dumps(["while logged out"]) + "\n")
        node.stdin.flush()
        result = node.stdout.readline().strip()
        assert result == "OK", result
        assert node.wait(30) == 0
    finally:
        if node.poll() is None:
            node.kill()
        _stop(gateway)
        _call(couch_backend, "DELETE", f"/{db}")
