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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.embedded import free_port
from tests.conftest import CouchBackend

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="/usr/bin/chromium is not installed (apt-get install chromium)"),
]


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


@dataclass
class Member:
    """A new database, and a new user who is its only member."""

    db: str
    name: str
    password: str
    user_doc: dict[str, Any]
    user_rev: str


def _member_of_new_database(backend: CouchBackend) -> Member:
    db = f"demo_{uuid.uuid4().hex[:10]}"
    name, password = f"user_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    user_doc = {"name": name, "password": password, "type": "user", "roles": []}
    created = _call(backend, "PUT", f"/_users/org.couchdb.user:{name}", user_doc)
    _call(backend, "PUT", f"/{db}")
    _call(backend, "PUT", f"/{db}/_security", {"members": {"names": [name], "roles": []}})
    return Member(db, name, password, user_doc, created["rev"])


def _browser_script(script: str, port: int, member: Member) -> Any:
    """``node tests/browser/<script> <gateway url> <db> <user> <password>``, piped."""
    node = subprocess.Popen(  # fixed argv
        ["node", str(ROOT / "tests/browser" / script), f"http://127.0.0.1:{port}",
         member.db, member.name, member.password],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    return node


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


def _clean_up(node: Any, gateway: subprocess.Popen[bytes], backend: CouchBackend, db: str) -> None:
    """Stop the browser script and the gateway, and drop the test database."""
    if node.poll() is None:
        node.kill()
    _stop(gateway)
    _call(backend, "DELETE", f"/{db}")


def test_two_pages_live_and_resume_after_gateway_restart(couch_backend: CouchBackend) -> None:
    member = _member_of_new_database(couch_backend)
    db = member.db
    port = free_port()
    gateway = _start_gateway(couch_backend, port)
    node = _browser_script("demo_two_pages.mjs", port, member)
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
        _clean_up(node, gateway, couch_backend, db)


def test_expired_session_asks_to_log_in_again_and_resumes(couch_backend: CouchBackend) -> None:
    member = _member_of_new_database(couch_backend)
    db, user = member.db, member.name
    port = free_port()
    gateway = _start_gateway(couch_backend, port, WALLABY_WS_AUTH_RECHECK="0.5")
    node = _browser_script("demo_session_expiry.mjs", port, member)
    try:
        assert node.stdout.readline().strip() == "SUBSCRIBED"
        # The user's session ends (the account is removed): every cookie of it is dead.
        _call(couch_backend, "DELETE", f"/_users/org.couchdb.user:{user}?rev={member.user_rev}")
        line = node.stdout.readline().strip()
        assert line == "LOGGED_OUT", line
        _call(couch_backend, "PUT", f"/{db}/meanwhile",
              {"title": "while logged out", "done": False, "created": "2099-01-01"})
        _call(couch_backend, "PUT", f"/_users/org.couchdb.user:{user}", member.user_doc)
        node.stdin.write("RELOGIN " + json.dumps(["while logged out"]) + "\n")
        node.stdin.flush()
        result = node.stdout.readline().strip()
        assert result == "OK", result
        assert node.wait(30) == 0
    finally:
        _clean_up(node, gateway, couch_backend, db)


def _metric(port: int, route: str, status: int) -> float:
    """``wallaby_http_requests_total`` for one route and status (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if (line.startswith("wallaby_http_requests_total{") and f'route="{route}"' in line
                and f'status="{status}"' in line and 'method="GET"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_browser_cache_revalidates_documents(couch_backend: CouchBackend) -> None:
    member = _member_of_new_database(couch_backend)
    db = member.db
    written = _call(couch_backend, "PUT", f"/{db}/cached", {"title": "first", "pad": "x" * 4000})
    port = free_port()
    gateway = _start_gateway(couch_backend, port)
    node = _browser_script("client_cache.mjs", port, member)
    try:
        line = node.stdout.readline().strip()
        assert line.startswith("READ "), line
        first, second = json.loads(line[5:])
        assert first == second and first["title"] == "first" and len(first["pad"]) == 4000
        # The second read went to the gateway and came back 304: the browser used its copy.
        assert _metric(port, "getDocument", 200) == 1
        assert _metric(port, "getDocument", 304) == 1

        _call(couch_backend, "PUT", f"/{db}/cached",
              {"_rev": written["rev"], "title": "second", "pad": ""})
        node.stdin.write("CHANGED\n")
        node.stdin.flush()
        line = node.stdout.readline().strip()
        assert line.startswith("READ "), line
        assert json.loads(line[5:])["title"] == "second"
        line = node.stdout.readline().strip()
        assert line.startswith("CODINGS "), line
        # Chromium asked for gzip: the 4 KB document came coded, the changed small one
        # plain (Chromium also reports the revalidated read, with the headers it kept).
        codings = json.loads(line[8:])
        assert codings[0] == "gzip" and codings[-1] is None, line
        assert _metric(port, "getDocument", 200) == 2
        assert _metric(port, "getDocument", 304) == 1
        assert node.wait(30) == 0
    finally:
        _clean_up(node, gateway, couch_backend, db)


def test_client_keeps_each_subscriptions_changes_its_own_across_a_restart(
    couch_backend: CouchBackend,
) -> None:
    """Feed ids restart with the gateway process: a subscription must not take another
    database's changes for its own until the new process has named its feed."""
    member = _member_of_new_database(couch_backend)
    other = f"other_{uuid.uuid4().hex[:10]}"
    _call(couch_backend, "PUT", f"/{other}")
    _call(couch_backend, "PUT", f"/{other}/_security",
          {"members": {"names": [member.name], "roles": []}})
    port = free_port()
    gateway = _start_gateway(couch_backend, port)
    node = subprocess.Popen(  # fixed argv
        ["node", str(ROOT / "tests/browser/client_feed_ids.mjs"), f"http://127.0.0.1:{port}",
         member.db, member.name, member.password, other],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    try:
        assert node.stdout.readline().strip() == "RESTART"
        gateway.kill()
        gateway.wait(15)
        added = [f"down{i}" for i in range(5)]
        for doc_id in added:  # written to the first database while the gateway is down
            _call(couch_backend, "PUT", f"/{member.db}/{doc_id}", {"v": 1})
        gateway = _start_gateway(couch_backend, port)
        node.stdin.write("RESTARTED " + json.dumps(added) + "\n")
        node.stdin.flush()
        assert node.stdout.readline().strip() == "OK"
        assert node.wait(30) == 0
    finally:
        _clean_up(node, gateway, couch_backend, member.db)
        _call(couch_backend, "DELETE", f"/{other}")
