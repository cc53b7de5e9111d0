"""How many ``GET /_session`` does the proxy-mode re-check cost?

gateway/ws/access.py promises "one jittered timer and one ``GET /<db>`` per pair per
interval"; the proxy-mode fix (8733c0b) adds a verification of the socket's credential
"before each pair's GET /<db>". A pair is (credential, database), so one socket of one
user subscribed to N databases verifies the *same* credential N times per interval
(each ``fresh=True``, and the pairs' jittered timers never overlap, so the single flight
does not merge them). The credential is one: its verification is needed once per
interval, whatever the number of databases (and for Basic credentials each one is a
password hash in CouchDB).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.authmodes import SECRET, bearer_of_login, spawn_in_mode
from tests.reliability.conftest import GatewayProcess, basic_header
from tests.reliability.wsclient import open_socket
from tests.support.couch_auth_standin import CouchAuthStandIn
from tests.ws.conftest import sleep

DBS = [f"db{i}" for i in range(6)]


@pytest.fixture
def fake() -> Iterator[CouchAuthStandIn]:
    couch = CouchAuthStandIn(secret=SECRET).start()
    couch.add_user("bob", "pw", ["editor"])
    for db in DBS:
        couch.add_db(db, roles=["editor"])
    yield couch
    couch.stop()


async def _subscribe_all(reactor: Any, gateway: GatewayProcess,
                         headers: dict[str, str]) -> Any:
    proto = await open_socket(reactor, gateway.port, gateway.ws_url, headers=headers)
    for i, db in enumerate(DBS):
        proto.send({"type": "subscribe", "id": f"s{i}", "db": db, "since": "now"})
    for _ in range(200):
        if sum(m.get("type") == "subscribed" for m in proto.messages) == len(DBS):
            return proto
        assert not [m for m in proto.messages if m.get("type") == "error"], proto.messages
        await sleep(reactor, 0.05)
    raise AssertionError(f"not subscribed: {proto.messages}")


@pytest.mark.parametrize("credential", ["bearer", "basic"])
async def test_proxy_recheck_verifies_a_credential_once_per_interval(
    reactor: Any, fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess],
    credential: str,
) -> None:
    gateway = spawn_in_mode(fake.url, tmp_path, gateways, "proxy",
                            WALLABY_WS_AUTH_RECHECK="1", WALLABY_WS_PING_INTERVAL="0")
    if credential == "bearer":
        headers = await bearer_of_login(gateway, "bob", "pw")
    else:
        headers = basic_header("bob", "pw")
    proto = await _subscribe_all(reactor, gateway, headers)
    before = len([r for r in fake.recorded("/_session") if r.method == "GET"])
    window = 6.0
    await sleep(reactor, window)
    sessions = len([r for r in fake.recorded("/_session") if r.method == "GET"]) - before
    proto.transport.loseConnection()
    # 1 s interval: at most one verification of the one credential per interval (+1 slack).
    assert sessions <= window + 1, (
        f"{sessions} GET /_session in {window:.0f} s for one {credential} credential on one "
        f"socket subscribed to {len(DBS)} databases (re-check interval 1 s): the credential "
        f"is verified once per (credential, database) pair, not once per interval")
