"""A subscribe answered from the authorization cache keeps the revocation bound.

docs/websocket.md (Semantics, Authorisation): a user who lost read access "receives
nothing more — within that interval plus one request". The factory reuses a successful
subscribe authorization for ``min(5 s, WALLABY_WS_AUTH_RECHECK)`` per (credential,
database) (``AuthorizationCache``): it must not let a user whose access was revoked just
after an unsubscribe subscribe again without a check, and a subscription started from a
cached authorization must be re-checked an interval after the request that really asked
(tests/ws/test_access_rechecks.py has the in-memory cases).
"""

from __future__ import annotations

from typing import Any

from gateway.couch import Database
from tests.ws.conftest import WsServer, sleep, ws_settings


async def test_a_subscribe_after_a_revocation_is_refused_not_answered_from_a_cache(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    interval = 3.0
    server: WsServer = await make_server(ws_settings(ws_auth_recheck=interval))
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    client = await server.connect(await server.login(user))
    assert (await client.subscribe("a", db.name))["type"] == "subscribed"
    authorized_at = reactor.seconds()
    client.send({"type": "unsubscribe", "id": "a"})
    await client.next("unsubscribed")
    await db.set_security({"members": {"names": ["someone_else"], "roles": []}})
    revoked_at = reactor.seconds()
    await sleep(reactor, max(0.0, authorized_at + interval - 0.4 - reactor.seconds()))
    subscribed_after = reactor.seconds() - revoked_at
    answer = await client.subscribe("b", db.name)
    leaked: list[str] = []
    if answer["type"] == "subscribed":
        # How long after the revocation changes still reach this user.
        await sleep(reactor, max(0.0, revoked_at + interval + 0.8 - reactor.seconds()))
        await db.save({"_id": "written-after-interval", "secret": True})
        await sleep(reactor, 0.5)
        leaked = [m["id"] for m in client.messages if m["type"] == "change"]
    assert answer["type"] == "error" and answer["id"] == "b", (
        f"a subscribe {subscribed_after:.1f} s after the revocation was answered "
        f"{answer['type']}; a change written {interval + 0.8:.1f} s after the revocation "
        f"(re-check interval {interval} s) was still delivered: {leaked}")
