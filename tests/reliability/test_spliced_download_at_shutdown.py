"""A spliced download gets the same shutdown grace as every other request in flight.

docs/deployment.md: on SIGTERM the gateway fails ``/ready``, serves on for
WALLABY_SHUTDOWN_DRAIN, closes the WebSockets, "then stops accepting and gives in-flight
requests WALLABY_SHUTDOWN_GRACE seconds". A download relayed with ``splice(2)``
(gateway/http/splice_relay.py) started its own grace timer at the ``before shutdown``
trigger, that is at SIGTERM: it was cut ``drain`` seconds before the others' deadline
(found by the flaky multigw test of an in-flight download behind HAProxy, cut at exactly
SIGTERM + 20 s while the gateway said it was "waiting up to 20.0s" from SIGTERM + 7 s).
"""

from __future__ import annotations

import signal
import time
import uuid
from http import client as httpclient
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, GatewayProcess, basic_header, http, spawn_gateway

DRAIN, GRACE = 6, 4


#: 24 MiB: more than the socket buffers hold.
PAYLOAD = bytes(range(256)) * (96 * 1024)


def _gateway_with_blob(couch_backend: CouchBackend, couch: Couch, tmp_path: Path,
                       gateways: list[GatewayProcess], drain: int, grace: int,
                       ) -> tuple[GatewayProcess, str, dict[str, str]]:
    """A gateway with that drain and grace, and a database whose ``doc`` holds PAYLOAD."""
    gateway = spawn_gateway(couch_backend.admin_url, tmp_path,
                            WALLABY_SHUTDOWN_DRAIN=str(drain), WALLABY_SHUTDOWN_GRACE=str(grace))
    gateways.append(gateway)
    db = couch.new_db()
    auth = basic_header(couch_backend.admin_username, couch_backend.admin_password)
    rev = couch.call("PUT", f"/{db}/doc", {"x": 1}).json["rev"]
    stored = http("PUT", f"{couch_backend.url}/{db}/doc/blob?rev={rev}", raw=PAYLOAD,
                  headers={**auth, "Content-Type": "application/octet-stream"}, timeout=120)
    assert stored.status == 201, stored.body[:200]
    return gateway, db, auth


def _download(gateway: GatewayProcess, db: str, auth: dict[str, str],
              ) -> tuple[httpclient.HTTPConnection, httpclient.HTTPResponse]:
    connection = httpclient.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
    connection.request("GET", f"/api/v1/db/{db}/docs/doc/attachments/blob",
                       headers={**auth, "X-Request-Id": uuid.uuid4().hex})
    response = connection.getresponse()
    assert response.status == 200
    return connection, response


def test_a_spliced_download_gets_the_grace_after_the_drain(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    gateway, db, auth = _gateway_with_blob(couch_backend, couch, tmp_path, gateways, DRAIN, GRACE)
    connection, response = _download(gateway, db, auth)
    got = bytearray(response.read(64 * 1024))
    metrics = http("GET", gateway.url + "/metrics").body.decode()
    assert "wallaby_spliced_downloads_active 1" in metrics, "the download is not spliced"
    gateway.process.send_signal(signal.SIGTERM)
    # The client reads nothing for longer than the grace, well within drain + grace.
    time.sleep(GRACE + 1)
    try:
        while chunk := response.read(1 << 20):
            got += chunk
    except (httpclient.IncompleteRead, OSError) as exc:
        got += getattr(exc, "partial", b"")
    connection.close()
    assert len(got) == len(PAYLOAD), (
        f"{len(got)} of {len(PAYLOAD)} bytes: the spliced download was cut at SIGTERM + "
        f"{GRACE} s, before the drain ({DRAIN} s) and the grace ({GRACE} s) after it")
    assert got == PAYLOAD
    assert gateway.process.wait(30) == 0


def test_a_download_spliced_during_the_drain_still_ends_at_the_deadline(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """Begun after SIGTERM (the drain still serves), read slowly: its shutdown trigger was
    added after the ``before shutdown`` phase had begun, so it never fired; at the deadline
    the gateway stopped waiting, and the reactor's thread pool then waited for the splice
    thread, which sent on for as long as the client read (still at SIGTERM + 26 s). The
    splicer now tracks its running transfers, and the shutdown waits for them."""
    drain, grace = 3, 3
    gateway, db, auth = _gateway_with_blob(couch_backend, couch, tmp_path, gateways, drain, grace)
    sigterm = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    time.sleep(1)  # within the drain: still served
    connection, response = _download(gateway, db, auth)
    got = 0
    cut_at = None
    try:
        while time.monotonic() - sigterm < drain + grace + 20:
            chunk = response.read(16 * 1024)  # a slow reader: about 64 KiB/s
            if not chunk:
                cut_at = time.monotonic() - sigterm
                break
            got += len(chunk)
            time.sleep(0.25)
    except (httpclient.IncompleteRead, OSError):
        cut_at = time.monotonic() - sigterm
    connection.close()
    alive = gateway.process.poll() is None
    assert got < len(PAYLOAD)
    assert cut_at is not None, (
        f"still receiving at SIGTERM + {drain + grace + 20} s ({got} bytes, gateway alive: {alive})")
    assert cut_at < drain + grace + 3, f"cut at SIGTERM + {cut_at:.1f} s"
    assert gateway.process.wait(15) == 0
    access = [line for line in gateway.out.read_text().splitlines()
              if '"type": "access"' in line and "attachments/blob" in line]
    assert len(access) == 1 and '"shutting_down"' in access[0], access
