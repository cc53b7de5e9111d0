"""gateway/ws/access.py: credentials kept apart, refusals forgotten, dead credentials
closing the socket with 4001. Each test fails with a one-line change to access.py that
passed the rest of the suite (session 22's mutation testing)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.config import Settings
from gateway.couch import CouchServer, Database
from gateway.identity import identify
from gateway.ws.access import credential_key
from gateway.ws.protocol import CLOSE_SESSION_INVALID
from gateway.ws.service import ChangesService
from tests.ws.conftest import WsServer, stop_server, ws_settings


def test_two_session_cookies_of_one_user_are_two_credentials() -> None:
    """access.py ``credential_key``: connections with the same key share one upstream
    transport (SharedIdentities). Two sessions of one user (two cookies) must not: the
    second connection would act upstream with the first one's cookie, and be closed
    when that session ends although its own is valid."""
    first = credential_key({}, {"wallaby_session": "ann:1:aaa"}, "wallaby_session", "ann")
    second = credential_key({}, {"wallaby_session": "ann:2:bbb"}, "wallaby_session", "ann")
    assert first != second
    bearer = credential_key({"authorization": "Bearer ann:1:aaa"}, {}, "wallaby_session", "ann")
    assert bearer not in (first, second)


async def test_basic_credentials_that_stop_authenticating_close_the_socket_with_4001(
    reactor: Any, admin: CouchServer, db: Database, make_user: Any,
) -> None:
    """access.py ``still_authenticated``: a 401 from ``GET /_session`` means the
    credentials no longer authenticate (a Basic user deleted or its password changed):
    the socket is closed with 4001 and its resume seqs, as for an ended cookie session,
    not left open with a per-subscription error."""
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    settings: Settings = ws_settings(ws_auth_recheck=0.3)

    async def authenticate(headers: Any, cookies: Any, client: str = "unknown") -> Any:
        return await identify(headers, cookies, admin, settings)  # the gateway's routine

    service = ChangesService(admin.transport, settings, authenticate, reactor)
    service.startService()
    server = WsServer(service, reactor.listenTCP(0, service.factory, interface="127.0.0.1"),
                      reactor, admin)
    try:
        await _basic_user_deleted(server, admin, db, user)
    finally:
        await stop_server(server)


async def _basic_user_deleted(server: WsServer, admin: CouchServer, db: Database,
                              user: Any) -> None:
    token = base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    client = await server.connect(headers={"Authorization": f"Basic {token}"})
    assert (await client.subscribe("s", db.name))["type"] == "subscribed"
    await db.save({"_id": "seen"})
    seen = await client.next("change")
    await admin.delete_user(user.name)  # the Basic credentials no longer authenticate
    closing = await client.next("closing", timeout=5)
    assert closing["code"] == CLOSE_SESSION_INVALID
    assert closing["resume"] == {"s": seen["seq"]}


@pytest.mark.parametrize("status", [403, 404])
def test_a_refused_recheck_forgets_the_cached_subscribe_authorization(status: int) -> None:
    """access.py ``AccessRechecks._check``: a re-check refused by CouchDB calls
    ``on_revoked`` (wired to ``AuthorizationCache.invalidate``) before telling the
    watchers (403: no longer a member; 404: the database was deleted); otherwise a subscriber whose access was just revoked could subscribe again
    at once on the cached authorization and be sent changes until the next re-check."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from gateway.errors import CouchError
    from gateway.ws.access import AccessRechecks, AuthorizationCache

    clock = Clock()
    asked: list[str] = []

    class Transport:
        refuse = False

        def request(self, method: str, path: list[str]) -> Deferred[Any]:
            asked.append(path[0])
            if self.refuse:
                raise CouchError("refused", status=status)
            return Deferred.fromCoroutine(_ok())

    async def _ok() -> dict[str, Any]:
        return {"db_name": "db"}

    class Watcher:
        revoked: list[str] = []

        def access_revoked(self, db: str, exc: CouchError) -> None:
            self.revoked.append(db)

        def session_ended(self) -> None:
            raise AssertionError("a 403 is not the end of the session")

    transport: Any = Transport()
    cache = AuthorizationCache(clock, ttl=10)
    rechecks = AccessRechecks(clock, 1.0, jitter=0.0, on_revoked=cache.invalidate)
    Deferred.fromCoroutine(cache.authorize("k", "db", transport))  # subscribe: cached
    watcher = Watcher()
    rechecks.watch("k", "db", transport, watcher)
    transport.refuse = True
    clock.advance(1.0)  # the re-check is refused
    assert watcher.revoked == ["db"]
    again = Deferred.fromCoroutine(cache.authorize("k", "db", transport))  # subscribe again
    assert asked == ["db", "db", "db"], asked  # CouchDB asked again, not the cache
    assert again.called and isinstance(again.result.value, CouchError)
    again.addErrback(lambda _: None)
    rechecks.stop()
