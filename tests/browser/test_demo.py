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
from collections.abc import Callable
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


def _browser_script(script: str, port: int, member: Member, *args: str) -> Any:
    """``node tests/browser/<script> <gateway url> <db> <user> <password> <args…>``, piped."""
    node = subprocess.Popen(  # fixed argv
        ["node", str(ROOT / "tests/browser" / script), f"http://127.0.0.1:{port}",
         member.db, member.name, member.password, *args],
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


@pytest.mark.parametrize("held", [False, True])
def test_client_keeps_each_subscriptions_changes_its_own_across_a_restart(
    couch_backend: CouchBackend, held: bool,
) -> None:
    """Feed ids restart with the gateway process: a subscription must not take another
    database's changes for its own until the new process has named its feed. ``held``:
    its ``subscribed`` comes 2 s late after the restart, so the other database's feed
    (under the id it had before) streams first; without it the order is left to luck."""
    member = _member_of_new_database(couch_backend)
    other = f"other_{uuid.uuid4().hex[:10]}"
    _call(couch_backend, "PUT", f"/{other}")
    _call(couch_backend, "PUT", f"/{other}/_security",
          {"members": {"names": [member.name], "roles": []}})
    port = free_port()
    gateway = _start_gateway(couch_backend, port)
    node = subprocess.Popen(  # fixed argv
        ["node", str(ROOT / "tests/browser/client_feed_ids.mjs"), f"http://127.0.0.1:{port}",
         member.db, member.name, member.password, other, *(["held"] if held else [])],
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


def _run_case(couch_backend: CouchBackend, script: str, *args: str,
              prepare: Callable[[Member], None] | None = None, **settings: str) -> None:
    """``node tests/browser/<script> <gateway> <db> <user> <password> <args…>`` prints OK."""
    member = _member_of_new_database(couch_backend)
    if prepare is not None:
        prepare(member)
    port = free_port()
    gateway = _start_gateway(couch_backend, port, **settings)
    node = _browser_script(script, port, member, *args)
    try:
        result = node.stdout.readline().strip()
        assert result == "OK", result
        assert node.wait(30) == 0
    finally:
        _clean_up(node, gateway, couch_backend, member.db)


@pytest.mark.parametrize("case", ["json_keys", "put_without_id", "errors", "request"])
def test_client_rest(couch_backend: CouchBackend, case: str) -> None:
    """json_keys: key/keys/startkey/endkey/… given as JS strings are sent as JSON;
    put_without_id: TypeError, nothing written; errors: a network failure and a non-JSON
    answer (a proxy's HTML 502) reject with WallabyError; request: the documented
    request() examples (find, a view, bulk_docs)."""
    def design_doc(member: Member) -> None:  # only a database admin may write one
        _call(couch_backend, "PUT", f"/{member.db}/_design/app", {"views": {"by_date": {
            "map": "function (doc) { if (doc.date) emit(doc.date, null); }"}}})

    _run_case(couch_backend, "client_rest.mjs", case,
              prepare=design_doc if case == "request" else None)


@pytest.mark.parametrize("case", ["identical", "error_closes", "resubscribe", "too_many",
                                  "status_throws", "too_big", "too_big_first", "dead_path",
                                  "online", "remount_leak", "logout_fails"])
def test_client_subscriptions(couch_backend: CouchBackend, case: str) -> None:
    """identical: two subscriptions with equal options on one client both work;
    error_closes: the last subscription ending with an error closes the socket;
    resubscribe: unsubscribe + subscribe at once (a remount) loses no change;
    too_many: one subscription more than a socket takes goes on another socket;
    status_throws: a throwing onStatus stops nothing; too_big: a subscribe message over
    the gateway's limit ends that subscription (1009) instead of a reconnect loop;
    too_big_first: also when it was sent before another one (which went on unanswered
    and was ended in its place); dead_path: a silent dead path is noticed by unanswered
    pings and nothing is lost; online: the browser's online event ends a backoff;
    remount_leak: subscriptions ended on a socket that stays open are freed;
    logout_fails: a logout that cannot reach the gateway throws and stops nothing."""
    _run_case(couch_backend, "client_subscriptions.mjs", case)


def test_client_login_as_another_user_reconnects_every_socket(couch_backend: CouchBackend) -> None:
    """After login() as another user, no socket goes on with the first user's session:
    a database only the first user may read sends the second nothing."""
    other = _member_of_new_database(couch_backend)
    try:
        _run_case(couch_backend, "client_subscriptions.mjs", "login_switch",
                  other.name, other.password)
    finally:
        _call(couch_backend, "DELETE", f"/{other.db}")


def test_client_forbidden_subscription_ends_alone(couch_backend: CouchBackend) -> None:
    """A database the user may not read (pouchdb-server: 401, CouchDB: 403) ends that
    subscription with onError; the shared socket and the other subscriptions go on."""
    forbidden = f"forbidden_{uuid.uuid4().hex[:10]}"
    _call(couch_backend, "PUT", f"/{forbidden}")
    _call(couch_backend, "PUT", f"/{forbidden}/_security",
          {"members": {"names": [f"nobody_{uuid.uuid4().hex[:6]}"], "roles": []}})
    try:
        _run_case(couch_backend, "client_subscriptions.mjs", "forbidden", forbidden)
    finally:
        _call(couch_backend, "DELETE", f"/{forbidden}")


def test_client_token_refused_handshake_reports_unauthenticated(couch_backend: CouchBackend) -> None:
    """A token client whose handshake is refused reports `unauthenticated` (no reconnect
    loop) and resumes after login()."""
    _run_case(couch_backend, "client_token.mjs", "refused")


def test_client_token_joins_a_ws_url_with_a_query(couch_backend: CouchBackend) -> None:
    """The token is added to a ``wsUrl`` that has a query string of its own (it made a
    second ``?``, so the gateway saw no token)."""
    _run_case(couch_backend, "client_token.mjs", "ws_url_query")


@pytest.mark.parametrize(("case", "recheck"), [("relogin", "0.5"), ("refused_sub", "30")])
def test_client_token_session_end_and_login_again(
    couch_backend: CouchBackend, case: str, recheck: str,
) -> None:
    """A token client: the session ends (the user is removed) — by a 4001 close (relogin)
    or a new subscription refused with 401 on an open socket (refused_sub). It reports
    `unauthenticated`, keeps its subscriptions, and after login() (which takes the new
    token) resumes them: the change made meanwhile arrives once."""
    member = _member_of_new_database(couch_backend)
    port = free_port()
    gateway = _start_gateway(couch_backend, port, WALLABY_WS_AUTH_RECHECK=recheck)
    node = _browser_script("client_token.mjs", port, member, case)
    try:
        line = node.stdout.readline().strip()
        assert line == "SUBSCRIBED", line
        _call(couch_backend, "DELETE",
              f"/_users/org.couchdb.user:{member.name}?rev={member.user_rev}")
        node.stdin.write("GONE\n")
        node.stdin.flush()
        line = node.stdout.readline().strip()
        assert line == "LOGGED_OUT", line
        _call(couch_backend, "PUT", f"/{member.db}/meanwhile", {"v": 1})
        _call(couch_backend, "PUT", f"/_users/org.couchdb.user:{member.name}", member.user_doc)
        node.stdin.write("RELOGIN meanwhile\n")
        node.stdin.flush()
        result = node.stdout.readline().strip()
        assert result == "OK", result
        assert node.wait(30) == 0
    finally:
        _clean_up(node, gateway, couch_backend, member.db)


def test_demo_lists_odd_documents_and_forgets_the_last_user(couch_backend: CouchBackend) -> None:
    """A document whose ``created`` is a number (another client wrote it) emptied the list
    for good (a TypeError in the sort); after the session ended, the next user to log in
    still saw the first user's items."""
    other = _member_of_new_database(couch_backend)
    try:
        _run_case(couch_backend, "demo_odd_documents.mjs", other.name, other.password)
    finally:
        _call(couch_backend, "DELETE", f"/{other.db}")


def test_demo_other_tab_logged_out_asks_to_log_in(couch_backend: CouchBackend) -> None:
    """Two tabs of the demo: tab A logs out; tab B's next REST call gets 401 and B shows
    the login form (not "Signed in" with an error); logging in again works."""
    _run_case(couch_backend, "demo_logout_two_tabs.mjs")
