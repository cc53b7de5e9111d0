"""TLS to CouchDB (gateway/couch/tls.py, session 20), real processes: the gateway, a TLS
terminator (tests/support/tlsproxy.py) in front of the session's pouchdb-server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import GatewayProcess, basic_header, http, spawn_gateway
from tests.support import tlscerts
from tests.support.gatewayproc import ROOT


def _start_proxy(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    log = tmp_path / f"proxy-{os.urandom(3).hex()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "tests.support.tlsproxy", *args],
                                   cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
    for _ in range(400):
        for line in log.read_text().splitlines():
            if line.startswith("READY "):
                return process, int(line.split()[1])
        time.sleep(0.05)
    process.kill()
    raise AssertionError(log.read_text())


def test_each_upstream_tls_connection_does_not_log_factory_lines(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """The pool's HTTP factory is quiet (gateway/couch/pool.py ``_QuietFactory``: Twisted
    logs "Starting factory"/"Stopping factory" for every connection of a noisy factory).
    HandshakeEndpoint wraps it in a ``_WatchingFactory`` (a ``WrappingFactory``, noisy by
    default) made per connection: two info lines per upstream TLS connection, with an
    object address, in the operator's log (JSON or text). A plain-http gateway logs none."""
    folder = tmp_path / "ca"
    folder.mkdir()
    ca = tlscerts.make_ca(folder)
    cert = ca.issue(folder, "good")
    upstream = couch_backend.url.split("://", 1)[1]
    process, port = _start_proxy(tmp_path, "--port", "0", "--cert", str(cert[0]),
                                 "--key", str(cert[1]), "--upstream", upstream)
    try:
        url = (f"https://{couch_backend.admin_username}:{couch_backend.admin_password}"
               f"@localhost:{port}")
        gateway = spawn_gateway(url, tmp_path, WALLABY_COUCHDB_CA_FILE=str(ca.path))
        gateways.append(gateway)
        admin = basic_header(couch_backend.admin_username, couch_backend.admin_password)
        before = len(gateway.logs().splitlines())
        answers: list[int] = []

        def call(i: int) -> None:
            answers.append(http("GET", gateway.url + f"/api/v1/db/nope{i}/docs/x",
                                headers=admin, timeout=30).status)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(5.5)  # idle pooled connections close (IDLE_TIMEOUT 4 s)
        lines = gateway.logs().splitlines()[before:]
    finally:
        process.kill()
        process.wait()
    assert len(answers) == 40 and set(answers) <= {404, 400}, answers
    access = [line for line in lines if '"type": "access"' in line]
    factory = [line for line in lines if "Starting factory" in line or "Stopping factory" in line]
    assert not factory, (f"{len(factory)} factory lines for {len(access)} requests, e.g. "
                         f"{factory[0]}")

