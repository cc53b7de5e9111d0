"""WALLABY_SHUTDOWN_DRAIN (session 20): a second SIGTERM (or Ctrl-C) during the drain."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import GatewayProcess, spawn_gateway


def test_a_second_sigterm_during_the_drain_is_not_a_critical_traceback(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """The drain (7 s in the cluster profile) keeps the reactor running after SIGTERM: an
    impatient operator's second Ctrl-C, or a supervisor that repeats SIGTERM, runs
    Twisted's handler again, whose ``reactor.stop()`` raises ``ReactorNotRunning`` — logged
    as a *critical* "while calling from thread" with a traceback. Expected: the second
    signal is taken quietly (or stops at once), never a critical traceback."""
    gateway = spawn_gateway(couch_backend.admin_url, tmp_path, WALLABY_SHUTDOWN_DRAIN="3")
    gateways.append(gateway)
    os.kill(gateway.process.pid, signal.SIGTERM)
    time.sleep(1.0)
    os.kill(gateway.process.pid, signal.SIGINT)  # Ctrl-C while it drains
    code = gateway.process.wait(30)
    logs = gateway.logs()
    critical = [line for line in logs.splitlines() if '"critical"' in line or "Traceback" in line]
    assert code == 0, code
    assert not critical, critical[0][:600]
