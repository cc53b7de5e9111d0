"""The wheel as a user installs it, outside the checkout.

Each test builds the wheel from this checkout, installs it somewhere that is not the
checkout and runs it from an empty folder, so nothing is found by accident through
the source tree.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The interpreter this venv was made from (not a venv itself: ``pip --user`` works there).
BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything pointing the gateway at the checkout or a server."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WALLABY_", "COUCHDB_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("wallaby_gateway-*.whl"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh venv with the wheel (and its dependencies) installed."""
    where = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([str(BASE_PYTHON), "-m", "venv", str(where)], check=True, timeout=120)
    subprocess.run([str(where / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300, env=_clean_env())
    return where


def _run_until_ready(argv: list[str], env: dict[str, str], cwd: Path,
                     timeout: float = 30) -> tuple[int | None, str]:
    """Start the gateway; return (exit status or None if it reached READY, stderr)."""
    err = cwd / "stderr.log"
    with err.open("wb") as handle:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=handle,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = err.read_text(errors="replace")
            if re.search(r"^READY \d+$", text, re.MULTILINE):
                return None, text
            if process.poll() is not None:
                return process.returncode, err.read_text(errors="replace")
            time.sleep(0.2)
        return -1, err.read_text(errors="replace")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def user_base(tmp_path: Path, wheel: Path) -> Iterator[Path]:
    """The wheel installed with ``pip install --user`` (PYTHONUSERBASE in tmp_path)."""
    base = tmp_path / "userbase"
    subprocess.run([str(BASE_PYTHON), "-m", "pip", "install", "-q", "--user", str(wheel)],
                   check=True, capture_output=True, timeout=300,
                   env=_clean_env(PYTHONUSERBASE=str(base)))
    yield base


def test_user_install_starts(user_base: Path, tmp_path: Path) -> None:
    """``pip install --user wallaby-gateway`` (or a system-wide pip on Debian, whose
    data go to /usr/local while sys.prefix is /usr): the install scheme's data folder is
    not ``sys.prefix``, and the gateway must still find its contract and start."""
    work = tmp_path / "work"
    work.mkdir()
    env = _clean_env(PYTHONUSERBASE=str(user_base))
    # The run below uses this install (not the checkout), contract included.
    assert list(user_base.glob("lib/python3*/site-packages/gateway/api_schema/openapi.yaml"))
    status, stderr = _run_until_ready(
        [str(BASE_PYTHON), "-m", "gateway", "run", "--port", "0",
         "--couchdb-url", "http://127.0.0.1:1"], env, work)
    assert status is None, f"exit {status}:\n{stderr[-600:]}"


def test_target_install_finds_its_contract(wheel: Path, tmp_path: Path) -> None:
    """``pip install --target`` (no install scheme at all): the contract is found in the
    package itself."""
    target = tmp_path / "target"
    subprocess.run([str(BASE_PYTHON), "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300,
                   env=_clean_env())
    run = subprocess.run([str(BASE_PYTHON), "-c",
                          "from gateway.schemas import api_schema_dir; print(api_schema_dir())"],
                         cwd=tmp_path, env=_clean_env(PYTHONPATH=str(target)),
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()) == target / "gateway" / "api_schema"
    assert (target / "gateway" / "api_schema" / "ws" / "subscribe.schema.json").is_file()


def test_installed_without_couchdb_url_names_couchdb_url(venv: Path, tmp_path: Path) -> None:
    """Installed from the wheel there is no project folder and no node_modules: without
    COUCHDB_URL the gateway should say how to point it at a CouchDB (COUCHDB_URL /
    --couchdb-url), not to "run 'npm ci' in the project folder"."""
    work = tmp_path / "work"
    work.mkdir()
    status, stderr = _run_until_ready(
        [str(venv / "bin" / "wallaby-gateway"), "run", "--port", "0"], _clean_env(), work)
    assert status not in (None, -1), stderr
    assert "COUCHDB_URL" in stderr, stderr
    assert "project folder" not in stderr, stderr


def test_failed_embedded_start_leaves_no_admin_config_behind(venv: Path, tmp_path: Path) -> None:
    """When the embedded server cannot be started at all (no pouchdb-server), nothing
    should be written into the current folder: today ``var/couch/config.json`` with the
    admin password in plain text is left in whatever folder the command ran in."""
    work = tmp_path / "work"
    work.mkdir()
    status, stderr = _run_until_ready(
        [str(venv / "bin" / "wallaby-gateway"), "run", "--port", "0"], _clean_env(), work)
    assert status not in (None, -1), stderr
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name != "stderr.log")
    assert left == [], f"left behind: {left}"


def test_pouchdb_server_override_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    """WALLABY_POUCHDB_SERVER names a file that does not exist: the gateway should stop
    naming the variable (as it does for WALLABY_COUCHDB_CA_FILE), not silently start
    whatever pouchdb-server it finds in node_modules."""
    work = tmp_path / "work"
    work.mkdir()
    env = _clean_env(WALLABY_POUCHDB_SERVER=str(tmp_path / "no" / "pouchdb-server"),
                     WALLABY_EMBEDDED_DATA_DIR=str(tmp_path / "couch"))
    env["PYTHONPATH"] = str(ROOT)
    from gateway.embedded import free_port

    status, stderr = _run_until_ready(
        [sys.executable, "-m", "gateway", "run", "--port", "0",
         "--couch-port", str(free_port())], env, work)
    assert status not in (None, -1), f"started anyway:\n{stderr[-400:]}"
    assert "WALLABY_POUCHDB_SERVER" in stderr, stderr


CONSUMER = '''\
"""A strict consumer of the documented client API."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from gateway.couch import Database, ViewResult


def on_changes(changes: list[dict[str, Any]], viewID: str | None = None) -> None:
    print(changes, viewID)


def rows(db: Database) -> Deferred[ViewResult]:
    return db.all_docs(include_docs=True)


def follow(db: Database) -> Deferred[None]:
    return db.changes(cb=on_changes, since="now")


def unfollow(db: Database) -> Deferred[bool]:
    return db.unchanges(since="now")
'''


def test_public_methods_are_typed_as_deferreds(venv: Path, tmp_path: Path) -> None:
    """README: every method returns a Deferred. ``all_docs``, ``changes`` and ``unchanges``
    are annotated ``-> Any``, so a ``mypy --strict`` consumer of the installed wheel gets
    ``no-any-return`` errors (and no checking of what it awaits)."""
    mypy = Path(sys.executable).parent / "mypy"
    if not mypy.exists():
        pytest.skip("mypy is not installed in this venv")
    (tmp_path / "consumer.py").write_text(CONSUMER)
    run = subprocess.run([str(mypy), "--strict", "--no-incremental", "--python-executable",
                          str(venv / "bin" / "python"), "consumer.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr

