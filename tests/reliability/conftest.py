"""Harness of the reliability suite: gateway processes, results recording, small HTTP helpers.

Gateways that must be killed (``kill -9``) or whose logs are scanned run as real child
processes (``python -m gateway run``: REST and WebSocket) with stdout/stderr captured to
files. Every test that
produces a figure appends one JSON line to ``var/reliability/results.jsonl`` through
:func:`record`; ``python -m tests.reliability.report`` turns them into the tables of
``RELIABILITY.md``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import CouchBackend

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "var" / "reliability" / "results.jsonl"
RUN_ID = os.environ.get("RELIABILITY_RUN_ID") or time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"


def record(suite: str, name: str, **figures: Any) -> None:
    """Append one result line (suite, test name, figures) to the results file."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    line = {"run": RUN_ID, "time": time.time(), "suite": suite, "name": name, **figures}
    with RESULTS.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")


# --------------------------------------------------------------------------- HTTP (blocking)

@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30, raw: bytes | None = None) -> Answer:
    """One blocking loopback request; HTTP errors are answers, not exceptions."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # loopback only
            return Answer(answer.status, dict(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers.items()), exc.read())


def basic_header(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Couch:
    """Blocking admin calls to the test server."""

    def __init__(self, backend: CouchBackend) -> None:
        self.backend = backend
        self.auth = basic_header(backend.admin_username, backend.admin_password)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Answer:
        return http(method, self.backend.url + path, body, self.auth, timeout=timeout)

    def new_db(self, members: list[str] | None = None, prefix: str = "rel") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        assert self.call("PUT", f"/{name}").status in (201, 202)
        if members is not None:
            assert self.call("PUT", f"/{name}/_security", {
                "admins": {"names": [], "roles": []},
                "members": {"names": members, "roles": []},
            }).status in (200, 201)
        return name

    def new_user(self) -> tuple[str, str]:
        name, password = f"user_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
        answer = self.call("PUT", f"/_users/org.couchdb.user:{name}",
                           {"name": name, "password": password, "type": "user", "roles": []})
        assert answer.status in (201, 202), answer
        return name, password

    def delete_db(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self.call("DELETE", f"/{name}", timeout=10)

    def changes(self, db: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/{db}/_changes?since=0").json["results"])


@pytest.fixture
def couch(couch_backend: CouchBackend) -> Couch:
    return Couch(couch_backend)


# --------------------------------------------------------------------------- gateway processes

@dataclass
class GatewayProcess:
    """A gateway child process; its stdout/stderr go to ``out``/``err``."""

    process: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/changes"

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def rss_kib(self) -> int:
        return int(self.ps.memory_info().rss // 1024)

    def fds(self) -> int:
        return int(self.ps.num_fds())

    def connections(self, status: str | None = None) -> int:
        conns = self.ps.net_connections(kind="tcp")
        return sum(1 for c in conns if status is None or c.status == status)

    def established_from_clients(self) -> int:
        """Established TCP connections on the gateway's listening port."""
        return sum(1 for c in self.ps.net_connections(kind="tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == self.port)

    def logs(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def kill9(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


SPAWNED: list[GatewayProcess] = []  # every gateway process of this session (log scans)


def spawn_gateway(couchdb_url: str, logdir: Path, *, port: int = 0, nofile: int | None = None,
                  **env: str) -> GatewayProcess:
    """Start ``python -m gateway run`` and wait (≤ 30 s) for its ``READY <port>`` line.

    With ``nofile``, the process may open that many descriptors (soft and hard limit,
    as ``prlimit --nofile=N:N`` sets).
    """
    tag = uuid.uuid4().hex[:8]
    out, err = logdir / f"gateway-{tag}.out", logdir / f"gateway-{tag}.err"
    environment = {
        **os.environ, "COUCHDB_URL": couchdb_url, "WALLABY_PORT": str(port),
        "WALLABY_HOST": "127.0.0.1", "WALLABY_LOG_FORMAT": "json",
        "WALLABY_RATE_LIMIT_PER_SECOND": "0", "PYTHONUNBUFFERED": "1", **env,
    }
    argv = [sys.executable, "-m", "gateway", "run"]

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with out.open("wb") as out_file, err.open("wb") as err_file:
        process = subprocess.Popen(argv, cwd=ROOT, env=environment, stdout=out_file,
                                   stderr=err_file, stdin=subprocess.DEVNULL,
                                   preexec_fn=limit if nofile is not None else None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in err.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                child = GatewayProcess(process, int(line.split()[1]), out, err, env)
                SPAWNED.append(child)
                return child
        if process.poll() is not None:
            raise AssertionError(f"gateway exited: {err.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("gateway did not start within 30 s")


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    """Gateway processes started by a test (append to the list); killed afterwards."""
    started: list[GatewayProcess] = []
    yield started
    for child in started:
        child.stop()


# Fixtures of the REST and WebSocket harnesses, reused here (in-process gateways/servers).
from tests.rest.conftest import start_gateway  # noqa: E402, F401
from tests.ws.conftest import make_server, ws_server  # noqa: E402, F401
