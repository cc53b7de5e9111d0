"""settings an operator gets wrong must stop the gateway at start, naming them.

README, Configuration: "A value that does not parse stops the gateway with a message
naming the variable." RELIABILITY.md (session 18) fixed "a ``COUCHDB_URL`` without a
scheme started and answered 500 to everything"; these are the same class of fault.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.embedded import free_port
from tests.conftest import CouchBackend
from tests.reliability.conftest import ROOT, Couch


def _start(env: dict[str, str], tmp_path: Path, args: tuple[str, ...] = ()
           ) -> tuple[subprocess.Popen[bytes], Path, Path, int | None]:
    """Start ``python -m gateway run``; return once it printed READY or exited."""
    tag = uuid.uuid4().hex[:8]
    out, err = tmp_path / f"gw-{tag}.out", tmp_path / f"gw-{tag}.err"
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("WALLABY_") and k not in ("COUCHDB_USER", "COUCHDB_PASSWORD")}
    environment.update({"WALLABY_HOST": "127.0.0.1", "WALLABY_PORT": str(free_port()),
                        "WALLABY_LOG_FORMAT": "json", "WALLABY_REQUEST_TIMEOUT": "5", **env})
    with out.open("wb") as o, err.open("wb") as e:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "run", *args], cwd=ROOT,
                                   env=environment, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in err.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                return process, out, err, int(line.split()[1])
        if process.poll() is not None:
            return process, out, err, None
        time.sleep(0.05)
    process.kill()
    raise AssertionError("gateway neither started nor exited")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:  # loopback only
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("couchdb_url", [
    # A docker compose service (or container) name with an underscore: Docker's DNS
    # resolves it, Twisted's HostnameEndpoint refuses it as "invalid hostname".
    "http://admin:pw@couch_db:5984",
    "http://admin:pw@-bad-.example:5984",
    "http://a b:5984",
])
def test_a_couchdb_host_the_gateway_cannot_connect_to_is_refused_at_start(
        couchdb_url: str, tmp_path: Path) -> None:
    """Observed: the gateway starts, passes /health, and answers every request — /ready
    included — 500 ``internal_error`` with a *critical* "unexpected error" traceback
    (``ValueError: invalid hostname: couch_db`` / ``Invalid URI``). Expected: stop at start
    with a message naming ``COUCHDB_URL`` (or connect, and answer /ready 503 while the
    name does not resolve) — never a 500 that names nothing."""
    process, out, err, port = _start({"COUCHDB_URL": couchdb_url}, tmp_path)
    try:
        if port is None:  # refused at start: the message must name the setting
            assert process.returncode == 2, process.returncode
            assert "COUCHDB_URL" in err.read_text(), err.read_text()
            return
        status, body = _get(f"http://127.0.0.1:{port}/ready")
        time.sleep(0.3)
        logs = out.read_text(errors="replace")
        critical = [line for line in logs.splitlines() if '"critical"' in line]
        assert status != 500, (status, body, critical[:1])
        assert not critical, critical[0][:400]
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)


def test_an_out_of_range_couchdb_port_is_named_as_such(tmp_path: Path) -> None:
    """``COUCHDB_URL=http://127.0.0.1:99999`` is refused, but the message blames the
    credentials ("percent-encode '/', '?', '#' and '@' in a user name or password"), which
    the URL does not even have. Expected: a message that names the port (99999)."""
    process, _, err, port = _start({"COUCHDB_URL": "http://127.0.0.1:99999"}, tmp_path)
    if port is not None:
        process.terminate()
        process.wait(20)
    message = err.read_text()
    assert process.returncode == 2, message
    assert "99999" in message, message


@pytest.mark.parametrize(("source", "value"), [
    ("env", "1_0"),       # Python's float() reads "1_0" as 10
    ("env", "\u0663\u0660"),  # Arabic-Indic "30": float() reads other scripts' digits
    ("flag", "1_000"),    # argparse's int() reads "1_000" as 1000
])
def test_numbers_parse_alike_from_every_source(source: str, value: str, tmp_path: Path) -> None:
    """``WALLABY_MAX_BODY_BYTES=1_000`` and ``=٣٠`` are refused ("is not a whole number":
    config.py says ``int()`` "also takes other scripts' digits and ``_``" and guards
    against it), yet ``WALLABY_REQUEST_TIMEOUT=1_0`` starts with a 10 s timeout, and
    ``--max-body-bytes 1_000`` starts with a 1000-byte cap. The flag and the variable of
    one setting disagree. Expected: refused (exit 2) with a message naming the setting."""
    if source == "env":
        process, _, err, port = _start({"COUCHDB_URL": "http://127.0.0.1:9",
                                        "WALLABY_REQUEST_TIMEOUT": value}, tmp_path)
        name = "WALLABY_REQUEST_TIMEOUT"
    else:
        process, _, err, port = _start({"COUCHDB_URL": "http://127.0.0.1:9"}, tmp_path,
                                       ("--couchdb-url", "http://127.0.0.1:9",
                                        "--max-body-bytes", value))
        name = "max-body-bytes"
    if port is not None:
        process.terminate()
        process.wait(20)
    assert port is None, f"{source} {value!r} was accepted"
    assert process.returncode == 2 and name in err.read_text(), err.read_text()


_RESOLVE_IN_CHILD = '''\
"""Test-only: make {name!r} resolve to 127.0.0.1 in this process (getaddrinfo)."""
import socket

_real = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    return _real("127.0.0.1" if host == {name!r} else host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo
'''


def test_a_couchdb_host_name_with_an_underscore_is_reached(
        couch_backend: CouchBackend, couch: Couch, tmp_path: Path) -> None:
    """``COUCHDB_URL=http://…@couch_db:5984`` (a docker compose service name) works: the
    gateway hands the name to the resolver instead of IDNA-refusing it at every request.

    Covered: a real ``python -m gateway run`` with that URL, its upstream connections
    (Twisted's resolver, happy eyeballs, the pool), /ready and a proxied read. The name
    resolves through a ``sitecustomize`` on the child's ``PYTHONPATH`` that maps
    ``couch_db`` to 127.0.0.1 in ``socket.getaddrinfo`` (no system file is touched).
    Not covered: the system resolver itself answering for a name with ``_`` (Docker's
    DNS does; glibc passes such names through).
    """
    hook = tmp_path / "resolve"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_RESOLVE_IN_CHILD.format(name="couch_db"))
    backend = urlsplit(couch_backend.admin_url)
    url = backend._replace(netloc=backend.netloc.replace(
        f"{backend.hostname}:", "couch_db:")).geturl()
    assert "couch_db" in url, url
    python_path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    db = couch.new_db()
    process, out, err, port = _start({"COUCHDB_URL": url, "PYTHONPATH": python_path}, tmp_path)
    try:
        assert port is not None, err.read_text()
        status, body = _get(f"http://127.0.0.1:{port}/ready")
        assert status == 200, (status, body, out.read_text()[-2000:])
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/db/{db}",
            headers={"Authorization": "Basic " + base64.b64encode(
                f"{couch_backend.admin_username}:{couch_backend.admin_password}".encode()
            ).decode()})
        with urllib.request.urlopen(request, timeout=30) as answer:  # loopback only
            assert answer.status == 200
            assert json.loads(answer.read())["db_name"] == db
        assert "invalid hostname" not in out.read_text()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)
