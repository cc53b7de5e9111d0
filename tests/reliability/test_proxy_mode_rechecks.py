"""Does a live-changes socket notice a revoked identity, in each ``WALLABY_AUTH_MODE``?

The gateway runs as a real process in front of a recording CouchDB 3.x stand-in
(``tests/support/couch_auth_standin.py``: CouchDB's cookie, proxy, JWT and Basic handlers), because
pouchdb-server has neither the proxy nor the JWT handler.

docs/websocket.md: close 4001 = "the session behind the socket expired or was revoked
(found at the periodic access re-check, after ``closing``)"; "Read access is re-checked
every ``WALLABY_WS_AUTH_RECHECK`` seconds; a user who lost it gets ``error
access_revoked`` and receives nothing more — within that interval plus one request."
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import threads

from tests.reliability.authmodes import RECHECK_EVERY_SECOND, SECRET, bearer_of_login, spawn_in_mode
from tests.reliability.conftest import GatewayProcess, http
from tests.reliability.wsclient import open_socket
from tests.support.couch_auth_standin import CouchAuthStandIn, hs256
from tests.ws.conftest import sleep


@pytest.fixture
def fake() -> Iterator[CouchAuthStandIn]:
    couch = CouchAuthStandIn(secret=SECRET).start()
    yield couch
    couch.stop()


def _gateway(fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess],
             mode: str) -> GatewayProcess:
    return spawn_in_mode(fake.url, tmp_path, gateways, mode, **RECHECK_EVERY_SECOND)


async def _subscribe(reactor: Any, gateway: GatewayProcess, headers: dict[str, str],
                     db: str) -> Any:
    proto = await open_socket(reactor, gateway.port, gateway.ws_url, headers=headers)
    proto.send({"type": "subscribe", "id": "s", "db": db, "since": "now"})
    for _ in range(100):
        if any(m.get("type") == "subscribed" for m in proto.messages):
            return proto
        errors = [m for m in proto.messages if m.get("type") == "error"]
        assert not errors, errors
        await sleep(reactor, 0.05)
    raise AssertionError(f"not subscribed: {proto.messages}")


async def _after_revocation(reactor: Any, fake: CouchAuthStandIn, proto: Any, db: str,
                            wait: float) -> tuple[list[str], Any]:
    """Wait ``wait`` s, write a document, wait again: ids delivered, close code."""
    await sleep(reactor, wait)
    fake.put_doc(db, "written-after-revocation", {"secret": True})
    await sleep(reactor, 2.0)
    delivered = [m.get("id") for m in proto.messages if m.get("type") == "change"]
    code = proto.closed.result[1] if proto.closed.called else None
    return delivered, code


@pytest.mark.parametrize("mode", ["forward", "proxy"])
async def test_ws_subscriber_of_a_deleted_user_is_closed(
    reactor: Any, fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess], mode: str,
) -> None:
    """The user's ``_users`` document is deleted (or its password changed: same effect,
    CouchDB's cookie no longer verifies). REST refuses them after the 5 s identity cache;
    the socket must be closed 4001 at the next access re-check (1 s here).

    forward: the re-check sends the user's cookie, CouchDB answers 401, ``/_session``
    says anonymous → 4001. proxy: the socket's upstream identity is the ``ProxyAuth``
    built once at the handshake (gateway/identity.py ``_verify``); CouchDB's proxy handler
    never consults ``_users``, so the re-check ``GET /db`` keeps succeeding and the
    deleted user keeps receiving documents for as long as the socket lives.
    """
    db = "alpha"
    fake.add_user("bob", "pw", ["editor"])
    fake.add_db(db, roles=["editor"])
    gateway = _gateway(fake, tmp_path, gateways, mode)
    bearer = await bearer_of_login(gateway, "bob", "pw")
    proto = await _subscribe(reactor, gateway, bearer, db)
    fake.put_doc(db, "before", {"v": 1})
    await sleep(reactor, 1.0)
    assert [m["id"] for m in proto.messages if m.get("type") == "change"] == ["before"]

    fake.delete_user("bob")
    delivered, code = await _after_revocation(reactor, fake, proto, db, wait=5.5)
    rest = await threads.deferToThread(http, "GET", gateway.url + f"/api/v1/db/{db}",
                                       None, bearer)
    assert rest.status == 401, (rest.status, rest.body)  # REST: refused after the cache
    assert "written-after-revocation" not in delivered and code == 4001, (
        f"{mode}: the deleted user's socket is still open (close code {code}) and "
        f"received {delivered}; re-check requests upstream: "
        f"{[r.get('X-Auth-CouchDB-UserName') or r.get('Cookie') for r in fake.recorded('/alpha') if r.method == 'GET' and '_changes' not in r.path][-3:]}")


@pytest.mark.parametrize("mode", ["forward", "proxy"])
async def test_ws_subscriber_who_lost_the_role_gets_access_revoked(
    reactor: Any, fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess], mode: str,
) -> None:
    """An admin takes the role that grants the database away (``_users`` doc updated).

    CouchDB reads the roles from ``_users`` on every cookie request, so in ``forward``
    mode the re-check is refused (403) → ``access_revoked``. In ``proxy`` mode the
    socket keeps sending ``X-Auth-CouchDB-Roles: editor`` captured at the handshake.
    """
    db = "alpha"
    fake.add_user("bob", "pw", ["editor"])
    fake.add_db(db, roles=["editor"])
    gateway = _gateway(fake, tmp_path, gateways, mode)
    bearer = await bearer_of_login(gateway, "bob", "pw")
    proto = await _subscribe(reactor, gateway, bearer, db)

    with fake.lock:
        fake.users["bob"]["roles"] = []
    delivered, _code = await _after_revocation(reactor, fake, proto, db, wait=3.0)
    revoked = [m for m in proto.messages if m.get("type") == "error"
               and m.get("error") == "access_revoked"]
    assert revoked and "written-after-revocation" not in delivered, (
        f"{mode}: no access_revoked {time.strftime('%X')}; delivered after the role was "
        f"removed: {delivered}; messages: {proto.messages[-3:]}")


async def test_ws_jwt_subscriber_is_closed_when_its_token_expires(
    reactor: Any, fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """jwt mode: the token itself goes upstream, so CouchDB refuses it once ``exp`` passes
    and the re-check closes the socket 4001 (control: passes)."""
    db = "alpha"
    fake.add_db(db, names=["jay"])
    gateway = _gateway(fake, tmp_path, gateways, "jwt")
    token = hs256({"sub": "jay", "exp": int(time.time()) + 3}, fake.jwt_key)
    proto = await _subscribe(reactor, gateway, {"Authorization": f"Bearer {token}"}, db)
    delivered, code = await _after_revocation(reactor, fake, proto, db, wait=5.0)
    assert code == 4001 and "written-after-revocation" not in delivered, (code, delivered)
