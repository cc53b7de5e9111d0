"""A removed role stops working on a proxy-mode socket (it kept working after 8733c0b).

8733c0b: "other roles -> the shared transport acts with the new ProxyAuth, so the GET
/<db> that follows answers access_revoked if the database is no longer readable".

gateway/ws/access.py ``AccessRechecks._credential_verifies`` compares the re-verified
roles with the roles of the *pair's* identity and, only when they differ, sets the
*shared* transport's auth (``pair.transport.auth = now.auth``). A pair created later
(``ChangesServerProtocol._watch``) starts with the connection's *handshake* identity,
whose roles may differ from what the shared transport was switched to. Sequence:

1. bob (no roles) opens a socket and subscribes to ``pub`` (readable by name);
2. an admin grants ``editor``: the ``pub`` pair's check switches the shared transport to
   ``ProxyAuth(bob, [editor])``;
3. bob subscribes to ``alpha`` (readable by ``editor``; legitimately, for now): its pair
   starts with the handshake identity (roles ``[]``); bob unsubscribes from ``pub``;
4. the admin removes ``editor``: the ``alpha`` pair re-verifies, gets roles ``[]`` =
   its identity's ``[]``, so nothing is updated and ``GET /alpha`` goes on with
   ``X-Auth-CouchDB-Roles: editor``: bob keeps reading ``alpha`` for the socket's life.

docs/websocket.md: "one whose roles changed is checked, and served, with the new roles";
"a user who lost it gets ``error access_revoked`` and receives nothing more — within that
interval plus one request."
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import threads

from tests.reliability.authmodes import RECHECK_EVERY_SECOND, SECRET, bearer_of_login, spawn_in_mode
from tests.reliability.conftest import GatewayProcess, http
from tests.reliability.wsclient import open_socket
from tests.support.couch_auth_standin import CouchAuthStandIn
from tests.ws.conftest import sleep


@pytest.fixture
def fake() -> Iterator[CouchAuthStandIn]:
    couch = CouchAuthStandIn(secret=SECRET).start()
    couch.add_user("bob", "pw", [])
    couch.add_db("pub", names=["bob"])
    couch.add_db("alpha", roles=["editor"])
    yield couch
    couch.stop()


async def _wait_for(reactor: Any, proto: Any, kind: str, sub_id: str) -> None:
    for _ in range(100):
        if any(m.get("type") == kind and m.get("id") == sub_id for m in proto.messages):
            return
        await sleep(reactor, 0.05)
    raise AssertionError(f"no {kind} {sub_id}: {proto.messages}")


@pytest.mark.parametrize("mode", ["forward", "proxy"])
async def test_a_role_granted_then_removed_is_revoked_on_the_socket(
    reactor: Any, fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess],
    mode: str,
) -> None:
    gateway = spawn_in_mode(fake.url, tmp_path, gateways, mode, **RECHECK_EVERY_SECOND)
    bearer = await bearer_of_login(gateway, "bob", "pw")
    proto = await open_socket(reactor, gateway.port, gateway.ws_url, headers=bearer)

    proto.send({"type": "subscribe", "id": "p", "db": "pub", "since": "now"})
    await _wait_for(reactor, proto, "subscribed", "p")
    with fake.lock:
        fake.users["bob"]["roles"] = ["editor"]          # granted
    await sleep(reactor, 2.5)                             # the pub pair's check sees it
    proto.send({"type": "subscribe", "id": "a", "db": "alpha", "since": "now"})
    await _wait_for(reactor, proto, "subscribed", "a")
    proto.send({"type": "unsubscribe", "id": "p"})
    await _wait_for(reactor, proto, "unsubscribed", "p")

    with fake.lock:
        fake.users["bob"]["roles"] = []                   # removed
    await sleep(reactor, 3.0)                             # > interval + one request
    fake.put_doc("alpha", "written-after-removal", {"secret": True})
    await sleep(reactor, 2.0)
    delivered = [m.get("id") for m in proto.messages if m.get("type") == "change"]
    revoked = [m for m in proto.messages
               if m.get("type") == "error" and m.get("error") == "access_revoked"]
    rest = await threads.deferToThread(http, "GET", gateway.url + "/api/v1/db/alpha",
                                       None, bearer)
    roles_sent = [r.get("X-Auth-CouchDB-Roles") for r in fake.recorded("/alpha")
                  if r.method == "GET" and "_changes" not in r.path][-2:]
    proto.transport.loseConnection()
    assert rest.status == 403, (rest.status, rest.body)  # REST knows the role is gone
    assert revoked and "written-after-removal" not in delivered, (
        f"{mode}: role removed 5 s ago, socket still reads alpha: delivered {delivered}, "
        f"no access_revoked; last re-checks of /alpha sent X-Auth-CouchDB-Roles {roles_sent}")


@pytest.mark.parametrize("mode", ["forward", "proxy"])
async def test_a_new_socket_after_a_role_removal_is_refused(
    reactor: Any, fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess],
    mode: str,
) -> None:
    """Same root cause, seen by a *fresh* handshake: after the removal, a new socket of
    the session (identity verified anew, roles ``[]``) gets the credential key of the
    first socket (same session, name and roles ``[]``) and so its shared transport, still
    switched to ``ProxyAuth(bob, [editor])``: its subscribe to ``alpha`` is accepted."""
    gateway = spawn_in_mode(fake.url, tmp_path, gateways, mode, **RECHECK_EVERY_SECOND)
    bearer = await bearer_of_login(gateway, "bob", "pw")
    first = await open_socket(reactor, gateway.port, gateway.ws_url, headers=bearer)
    first.send({"type": "subscribe", "id": "p", "db": "pub", "since": "now"})
    await _wait_for(reactor, first, "subscribed", "p")
    with fake.lock:
        fake.users["bob"]["roles"] = ["editor"]
    await sleep(reactor, 2.5)
    first.send({"type": "unsubscribe", "id": "p"})
    await _wait_for(reactor, first, "unsubscribed", "p")
    with fake.lock:
        fake.users["bob"]["roles"] = []
    await sleep(reactor, 6.0)                             # past the 5 s identity cache
    second = await open_socket(reactor, gateway.port, gateway.ws_url, headers=bearer)
    second.send({"type": "subscribe", "id": "a", "db": "alpha", "since": "now"})
    for _ in range(60):
        if any(m.get("id") == "a" for m in second.messages):
            break
        await sleep(reactor, 0.05)
    first.transport.loseConnection()
    second.transport.loseConnection()
    answer = [m for m in second.messages if m.get("id") == "a"]
    assert answer and answer[0].get("type") == "error", (
        f"{mode}: bob has no role for alpha any more, a new socket's subscribe got {answer}")
