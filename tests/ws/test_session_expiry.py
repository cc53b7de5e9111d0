"""Long-lived sockets and CouchDB's expiring sessions.

A WebSocket lives far longer than a CouchDB session (10 minutes by default). The socket's
periodic access re-check keeps the session alive (CouchDB refreshes the cookie, the
forwarded credentials adopt it), exactly as a browser talking to CouchDB would. When the
session really ends (the user is gone), the socket is closed with 4001 and resume seqs.
"""

from __future__ import annotations

from typing import Any

from gateway.couch import CouchServer, Database
from gateway.ws.protocol import CLOSE_SESSION_INVALID
from tests.conftest import CouchBackend
from tests.support.couchconfig import config_value
from tests.ws.conftest import WsServer, sleep, ws_settings

SESSION_SECONDS = 4


async def test_recheck_keeps_a_socket_session_alive_past_its_timeout(
    make_server: Any, admin: CouchServer, couch_backend: CouchBackend, db: Database,
    make_user: Any, reactor: Any,
) -> None:
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    async with config_value(admin, couch_backend.is_pouchdb, "chttpd_auth", "timeout",
                            str(SESSION_SECONDS)):
        server: WsServer = await make_server(ws_settings(ws_auth_recheck=0.5))
        client = await server.connect(await server.login(user))
        assert (await client.subscribe("s", db.name))["type"] == "subscribed"
        await sleep(reactor, SESSION_SECONDS * 2.5)  # the login cookie is long expired
        await db.save({"_id": "still-delivered"})
        change = await client.next("change", timeout=5)
        assert change["id"] == "still-delivered"
        assert not [m for m in client.messages if m["type"] in ("error", "closing")]
        assert not client.protocol.closed.called


async def test_a_session_that_ends_closes_the_socket_with_4001_and_resume_seqs(
    make_server: Any, admin: CouchServer, db: Database, make_user: Any,
) -> None:
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    server: WsServer = await make_server(ws_settings(ws_auth_recheck=0.3))
    client = await server.connect(await server.login(user))
    assert (await client.subscribe("s", db.name))["type"] == "subscribed"
    await db.save({"_id": "seen"})
    seen = await client.next("change")
    await admin.delete_user(user.name)  # its session cookie no longer authenticates
    closing = await client.next("closing", timeout=5)
    assert closing["code"] == CLOSE_SESSION_INVALID
    assert closing["resume"] == {"s": seen["seq"]}
    _clean, code, _reason = await client.protocol.closed
    assert code == CLOSE_SESSION_INVALID
    assert server.feeds() == 0
