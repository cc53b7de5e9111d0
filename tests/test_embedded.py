"""The embedded pouchdb-server: loopback only, admin user, data kept across restarts, no strays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import deferToThread

from gateway.couch import BasicAuth, CouchServer, ForwardedAuth, NoAuth, Unauthorized
from gateway.embedded import EmbeddedCouch
from tests.conftest import CouchBackend
from tests.support.gatewayproc import ROOT


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def _only_embedded(couch_backend: CouchBackend) -> None:
    if couch_backend.embedded is None:
        pytest.skip("checks the embedded server, which an external COUCHDB_URL run does not use")


async def test_restart_keeps_data_and_stop_leaves_no_process(
    couch_backend: CouchBackend, tmp_path: Path, reactor: Any, pool: Any
) -> None:
    _only_embedded(couch_backend)
    server = EmbeddedCouch(tmp_path / "data", admin_password="pw-embedded")
    await deferToThread(server.start)
    try:
        assert server.host == "127.0.0.1"
        couch = CouchServer(server.url, reactor=reactor, pool=pool,
                            auth=BasicAuth("admin", "pw-embedded"))
        with pytest.raises(Unauthorized):
            await couch.as_identity(BasicAuth("admin", "wrong")).database("keep").info()
        anonymous = await couch.as_identity(NoAuth()).session()
        assert anonymous["userCtx"]["name"] is None
        database = couch.database("keep")
        await database.create()
        await database.save({"_id": "survivor", "v": 42})
        cookie = await couch.transport.login("admin", "pw-embedded")
        pid = server.process.pid if server.process else -1
        await pool.closeCachedConnections()
        await deferToThread(server.kill)
        assert not _alive(pid)
        await deferToThread(server.restart)
        assert (await database.get("survivor"))["v"] == 42
        # Sessions outlive the restart (pouchdb-server drew a new cookie secret each start,
        # logging every browser out; CouchDB keeps its [chttpd_auth] secret).
        kept = couch.as_identity(ForwardedAuth({"Cookie": f"AuthSession={cookie}"}))
        assert (await kept.session())["userCtx"]["name"] == "admin"
        # The plain-text admin password was hashed on first start, as CouchDB does.
        assert "pw-embedded" not in (tmp_path / "data" / "config.json").read_text()
    finally:
        pid = server.process.pid if server.process else -1
        await pool.closeCachedConnections()
        await deferToThread(server.stop)
    assert server.process is None
    assert not _alive(pid)


def test_server_exits_when_its_starter_is_killed(tmp_path: Path) -> None:
    """No stray server even when the process that started it dies by SIGKILL."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time; from pathlib import Path\n"
        "from gateway.embedded import EmbeddedCouch\n"
        "s = EmbeddedCouch(Path(sys.argv[1]), admin_password='pw'); s.start()\n"
        "print(s.process.pid, flush=True); time.sleep(120)\n"
    )
    starter = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data")],
                               stdout=subprocess.PIPE, text=True)
    assert starter.stdout is not None
    server_pid = int(starter.stdout.readline())
    assert _alive(server_pid)
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    survived = _alive(server_pid)
    if survived:
        os.killpg(server_pid, signal.SIGKILL)
    assert not survived, "the embedded server outlived the process that started it"


async def test_the_configured_admin_password_wins_over_an_earlier_start(
    couch_backend: CouchBackend, tmp_path: Path, reactor: Any, pool: Any
) -> None:
    _only_embedded(couch_backend)
    first = EmbeddedCouch(tmp_path / "data", admin_password="first-pw")
    await deferToThread(first.start)
    await deferToThread(first.stop)
    second = EmbeddedCouch(tmp_path / "data", admin_password="second-pw")
    await deferToThread(second.start)
    try:
        couch = CouchServer(second.url, reactor=reactor, pool=pool, auth=NoAuth())
        now = await couch.as_identity(BasicAuth("admin", "second-pw")).session()
        assert now["userCtx"]["name"] == "admin"
        with pytest.raises(Unauthorized):
            await couch.as_identity(BasicAuth("admin", "first-pw")).database("x").info()
        assert (tmp_path / "data").stat().st_mode & 0o077 == 0  # secrets and data inside
    finally:
        await pool.closeCachedConnections()
        await deferToThread(second.stop)


def _leave_time_wait_on(port: int) -> None:
    """What a server that just stopped leaves on its port: TIME-WAIT sockets of the
    connections it closed first, and nothing listening."""
    import socket
    import time

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: TIME-WAIT on the server's port
    time.sleep(0.1)
    client.close()
    server.close()


def test_a_port_left_in_time_wait_by_the_last_run_is_free_but_a_listened_one_is_not() -> None:
    """A quick second ``./wallaby run`` took a random port instead of 5984 (or its
    ``--couch-port``): the probe's plain bind failed on TIME-WAIT sockets, which a
    listener with SO_REUSEADDR, as Node's, does not mind."""
    import socket

    from gateway.__main__ import _port_free
    from gateway.embedded import free_port

    port = free_port()
    _leave_time_wait_on(port)
    assert _port_free("127.0.0.1", port)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not _port_free("127.0.0.1", port)


def _no_checkout_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As installed from the wheel: no node_modules next to the package or in the cwd."""
    import gateway.embedded

    monkeypatch.setattr(gateway.embedded, "_PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WALLABY_POUCHDB_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))


def test_pouchdb_server_on_path_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.embedded import find_pouchdb_server

    _no_checkout_server(monkeypatch, tmp_path)
    (tmp_path / "bin").mkdir()
    executable = tmp_path / "bin" / "pouchdb-server"
    executable.write_text("#!/usr/bin/env node\n")
    executable.chmod(0o755)
    assert find_pouchdb_server() == executable


def test_no_pouchdb_server_names_the_variable_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gateway.embedded import find_pouchdb_server

    _no_checkout_server(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match="WALLABY_POUCHDB_SERVER"):
        find_pouchdb_server()
    server = EmbeddedCouch(tmp_path / "data", admin_password="secret-pw")
    with pytest.raises(FileNotFoundError):
        server.start()
    assert not (tmp_path / "data").exists()


def test_a_missing_pouchdb_server_override_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Set, it is the only place looked at (the checkout's node_modules is not)."""
    from gateway.embedded import find_pouchdb_server

    monkeypatch.setenv("WALLABY_POUCHDB_SERVER", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="WALLABY_POUCHDB_SERVER: no such file"):
        find_pouchdb_server()


def _run_without_couchdb_url(tmp_path: Path, pouchdb_server: Path, **env: str
                             ) -> subprocess.CompletedProcess[str]:
    """``python -m gateway run`` with no COUCHDB_URL, starting ``pouchdb_server``."""
    environment = {k: v for k, v in os.environ.items()
                   if k != "COUCHDB_URL" and not k.startswith("WALLABY_")}
    environment.update(WALLABY_POUCHDB_SERVER=str(pouchdb_server), **env)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--port", "0",
         "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60, check=False)


def test_no_pouchdb_server_is_a_failed_start_with_exit_status_1(tmp_path: Path) -> None:
    ran = _run_without_couchdb_url(tmp_path, tmp_path / "nowhere")
    assert ran.returncode == 1, (ran.returncode, ran.stderr)
    assert "COUCHDB_URL" in ran.stderr and "WALLABY_POUCHDB_SERVER" in ran.stderr, ran.stderr
    assert not (tmp_path / "data").exists()


def test_an_empty_couchdb_url_is_a_bad_setting_not_the_embedded_server(tmp_path: Path) -> None:
    """``COUCHDB_URL=${COUCHDB_URL:-}`` in a compose file: exit 2, saying to unset it for
    the embedded server; never the embedded server (another data store) in its place."""
    ran = _run_without_couchdb_url(tmp_path, tmp_path / "nowhere", COUCHDB_URL="")
    assert ran.returncode == 2, (ran.returncode, ran.stderr)
    assert "COUCHDB_URL: empty; unset it" in ran.stderr and "embedded" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr and not (tmp_path / "data").exists()


def test_an_empty_embedded_admin_password_is_a_bad_setting(tmp_path: Path) -> None:
    """An admin account with an empty password is never made: exit 2, naming the setting."""
    ran = _run_without_couchdb_url(tmp_path, tmp_path / "nowhere",
                                   WALLABY_EMBEDDED_ADMIN_PASSWORD="")
    assert ran.returncode == 2, (ran.returncode, ran.stderr)
    assert "WALLABY_EMBEDDED_ADMIN_PASSWORD: empty" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr and not (tmp_path / "data").exists()


def test_the_embedded_server_listens_on_5984_by_default(tmp_path: Path) -> None:
    """__main__'s docstring: the embedded server's port is 5984 unless busy. A stand-in
    pouchdb-server records the arguments it was started with, then exits."""
    from gateway.__main__ import _port_free

    if not _port_free("127.0.0.1", 5984):
        pytest.skip("5984 is busy here: the gateway would rightly pick another port")
    argv_file = tmp_path / "argv.json"
    fake = tmp_path / "pouchdb-server.js"
    fake.write_text(f"require('fs').writeFileSync({json.dumps(str(argv_file))}, "
                    "JSON.stringify(process.argv)); process.exit(3);\n")
    ran = _run_without_couchdb_url(tmp_path, fake)
    assert ran.returncode == 1, (ran.returncode, ran.stderr)  # it exited: a failed start
    assert "the embedded CouchDB did not start" in ran.stderr, ran.stderr
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--port") + 1] == "5984", argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1", argv


def test_the_embedded_admin_password_setting_is_the_one_the_server_is_given(
        tmp_path: Path) -> None:
    """README: WALLABY_EMBEDDED_ADMIN_PASSWORD is the embedded server's admin password."""
    config_copy = tmp_path / "config-seen.json"
    fake = tmp_path / "pouchdb-server.js"
    fake.write_text(
        "const fs = require('fs'); const a = process.argv;\n"
        "fs.copyFileSync(a[a.indexOf('--config') + 1], "
        f"{json.dumps(str(config_copy))}); process.exit(3);\n")
    ran = _run_without_couchdb_url(tmp_path, fake,
                                   WALLABY_EMBEDDED_ADMIN_PASSWORD="not-the-default-pw")
    assert ran.returncode == 1, ran.stderr
    assert json.loads(config_copy.read_text())["admins"] == {"admin": "not-the-default-pw"}


def test_a_server_that_does_not_take_the_admin_credentials_is_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EmbeddedCouch.start waits until the server answers *as the admin*: a server that
    answers /_session as anonymous (its admin not configured) never becomes ready."""
    fake = tmp_path / "pouchdb-server.js"
    fake.write_text(
        "const a = process.argv; const port = Number(a[a.indexOf('--port') + 1]);\n"
        "require('http').createServer((q, r) => { r.setHeader('Content-Type', "
        "'application/json'); r.end(JSON.stringify({ok: true, userCtx: {name: null, "
        "roles: []}})); }).listen(port, '127.0.0.1');\n")
    monkeypatch.setenv("WALLABY_POUCHDB_SERVER", str(fake))
    server = EmbeddedCouch(tmp_path / "data")
    try:
        with pytest.raises(RuntimeError, match="did not become ready within 3 s"):
            server.start(timeout=3)
        assert server.process is None  # stopped
    finally:
        server.stop()
