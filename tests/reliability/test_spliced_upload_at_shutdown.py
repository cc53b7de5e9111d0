"""A spliced upload begun during the drain, whose client stops mid-body, ends at the
shutdown deadline (docs/deployment.md: drain, then the grace, then exit 0)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benches.stream import StubUpstream
from gateway.http.splice_loop import available
from tests.reliability.conftest import GatewayProcess, http, spawn_gateway
from tests.rest.test_splice_upload import SEED, _head

pytestmark = pytest.mark.skipif(not available(), reason="splice(2) is Linux-only")
MIB = 1 << 20


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubUpstream]:
    upstream = StubUpstream(tmp_path, SEED)
    yield upstream
    upstream.stop()


def test_an_upload_spliced_during_the_drain_whose_client_stops_ends_at_the_deadline(
    stub: StubUpstream, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    drain, grace = 3, 3
    gateway = spawn_gateway(stub.url, tmp_path, COUCHDB_USER="admin", COUCHDB_PASSWORD="stub",
                            WALLABY_SHUTDOWN_DRAIN=str(drain), WALLABY_SHUTDOWN_GRACE=str(grace))
    gateways.append(gateway)
    sigterm = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    length = 8 * MIB
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=60) as sock:
        sock.sendall(_head("slow", length))
        sock.sendall(bytes(2 * MIB))
        time.sleep(0.5)
        metrics = http("GET", gateway.url + "/metrics").body.decode()
        assert "wallaby_spliced_uploads_active 1" in metrics, "not spliced"
        # The client sends nothing more; wait for the gateway to answer or cut.
        sock.settimeout(drain + grace + 20)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        ended = time.monotonic() - sigterm
    status = gateway.process.wait(20)
    logs = gateway.logs()
    assert ended < drain + grace + 2, f"connection ended at SIGTERM + {ended:.1f} s"
    assert status == 0, status
    assert "Unhandled error" not in logs, logs[-3000:]
    assert '"critical"' not in logs, logs[-3000:]
    access = [line for line in gateway.out.read_text().splitlines()
              if '"type": "access"' in line and "attachments/blob" in line]
    assert len(access) == 1 and "shutting_down" in access[0], (answer[:300], access)

