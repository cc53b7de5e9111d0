"""F3: concurrent identity verifications and subscribe authorizations share one request."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from gateway.config import Settings
from gateway.couch import Database
from gateway.errors import AuthenticationRequired, Forbidden, Unauthorized
from gateway.identity import IdentityCache, identify
from gateway.singleflight import Flight, single_flight
from gateway.ws.access import AuthorizationCache
from tests.ws.conftest import WsServer, spy_on_upstream


class _Couch:
    """A CouchServer stand-in whose ``_session`` answers are released by the test."""

    def __init__(self) -> None:
        self.calls: list[Deferred[Any]] = []

    def as_identity(self, auth: Any) -> _Couch:
        return self

    def session(self) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.calls.append(answer)
        return answer


def _basic(user: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()}


def test_concurrent_identifications_share_one_session_request() -> None:
    clock = Clock()
    couch, settings = _Couch(), Settings()
    cache = IdentityCache(clock=clock.seconds)
    waiting = [Deferred.fromCoroutine(identify(_basic("alice"), {}, couch, settings,  # type: ignore[arg-type]
                                               cache=cache)) for _ in range(20)]
    other = Deferred.fromCoroutine(identify(_basic("bob"), {}, couch, settings,  # type: ignore[arg-type]
                                            cache=cache))
    assert len(couch.calls) == 2  # one per credential, not one per caller
    waiting[3].cancel()  # one caller giving up does not cancel the others' answer
    couch.calls[0].callback({"userCtx": {"name": "alice", "roles": ["r"]}})
    couch.calls[1].callback({"userCtx": {"name": "bob", "roles": []}})
    results = [d.result for d in waiting if not isinstance(d.result, Exception)
               and getattr(d.result, "name", None)]
    assert len(results) == 19 and {r.name for r in results} == {"alice"}
    assert len({id(r) for r in results}) == 1
    waiting[3].addErrback(lambda f: f.trap(CancelledError))
    assert other.result.name == "bob"
    # Cached afterwards, as before: no new request.
    again = Deferred.fromCoroutine(identify(_basic("alice"), {}, couch, settings,  # type: ignore[arg-type]
                                            cache=cache))
    assert again.result is results[0] and len(couch.calls) == 2
    assert cache.inflight == {}


def test_a_refused_verification_fails_every_waiter_and_is_not_cached() -> None:
    clock = Clock()
    couch, settings = _Couch(), Settings()
    cache = IdentityCache(clock=clock.seconds)
    waiting = [Deferred.fromCoroutine(identify(_basic("mallory"), {}, couch, settings,  # type: ignore[arg-type]
                                               cache=cache)) for _ in range(5)]
    assert len(couch.calls) == 1
    couch.calls[0].errback(Unauthorized("no"))
    failures: list[Any] = []
    for d in waiting:
        d.addErrback(failures.append)
    assert len(failures) == 5 and all(f.check(AuthenticationRequired) for f in failures)
    retry = Deferred.fromCoroutine(identify(_basic("mallory"), {}, couch, settings,  # type: ignore[arg-type]
                                            cache=cache))
    assert len(couch.calls) == 2  # asked again
    couch.calls[1].callback({"userCtx": {"name": "mallory", "roles": []}})
    assert retry.result.name == "mallory"


def test_single_flight_of_a_synchronous_call() -> None:
    inflight: dict[Any, Flight] = {}

    async def now() -> int:
        return 7

    assert single_flight(inflight, "k", now).result == 7 and inflight == {}


class _Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], Deferred[Any]]] = []

    def request(self, method: str, segments: list[str], **_: Any) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.calls.append((method, list(segments), answer))
        return answer


def test_authorization_cache_single_flight_and_ttl() -> None:
    clock = Clock()
    cache = AuthorizationCache(clock, ttl=5.0)
    transport: Any = _Transport()
    waiting = [Deferred.fromCoroutine(cache.authorize("k1", "db", transport)) for _ in range(10)]
    other_db = Deferred.fromCoroutine(cache.authorize("k1", "db2", transport))
    other_user = Deferred.fromCoroutine(cache.authorize("k2", "db", transport))
    assert [c[1] for c in transport.calls] == [["db"], ["db2"], ["db"]]
    transport.calls[0][2].callback({})
    assert all(d.called and d.result == 0.0 for d in waiting)  # when it was asked
    # Reused within the TTL, asked again after it.
    assert Deferred.fromCoroutine(cache.authorize("k1", "db", transport)).called
    assert len(transport.calls) == 3
    clock.advance(5.1)
    later = Deferred.fromCoroutine(cache.authorize("k1", "db", transport))
    assert len(transport.calls) == 4 and not later.called
    transport.calls[3][2].callback({})
    # A refusal reaches every waiter and is not cached.
    transport.calls[2][2].errback(Forbidden("no"))
    failures: list[Any] = []
    other_user.addErrback(failures.append)
    assert failures and failures[0].check(Forbidden)
    Deferred.fromCoroutine(cache.authorize("k2", "db", transport))
    assert len(transport.calls) == 5
    # invalidate() forgets a pair at once (a re-check was refused).
    cache.invalidate("k1", "db")
    Deferred.fromCoroutine(cache.authorize("k1", "db", transport))
    assert len(transport.calls) == 6
    transport.calls[1][2].callback({})
    assert other_db.called


async def test_concurrent_subscribes_of_one_user_share_one_authorization(
    make_server: Any, db: Database, make_user: Any, monkeypatch: Any,
) -> None:
    server: WsServer = await make_server()
    token = await server.login(await make_user())
    clients = [await server.connect(token) for _ in range(10)]
    service_transport = server.service.hub.transport
    # As the user (the hub may also look, as the service).
    asked = spy_on_upstream(monkeypatch, lambda transport, method, segments, _: (
        segments if method == "GET" and segments == [db.name]
        and transport is not service_transport else None))
    for i, client in enumerate(clients):
        client.send({"type": "subscribe", "id": f"s{i}", "db": db.name})
    for client in clients:
        assert (await client.next("subscribed"))["db"] == db.name
    assert len(asked) == 1
    await db.save({"_id": "x"})
    for client in clients:
        assert (await client.next("change"))["id"] == "x"


@pytest.mark.parametrize("recheck, expected", [(0.0, 5.0), (30.0, 5.0), (2.0, 2.0), (1.0, 1.0)])
def test_authorization_ttl_never_exceeds_the_recheck_interval(recheck: float, expected: float) -> None:
    """With re-checks every second, a revoked user must not subscribe on a 5 s old
    authorization; with re-checks off (0), the 5 s of ``AUTHORIZATION_TTL`` hold."""
    from gateway.ws.factory import ChangesServerFactory
    from gateway.ws.hub import FeedHub

    clock = Clock()
    hub = FeedHub(Any, lambda payload: payload, clock)  # type: ignore[arg-type]
    factory = ChangesServerFactory(hub, Settings(ws_auth_recheck=recheck), None, clock)  # type: ignore[arg-type]
    assert factory.authorizations.ttl == expected


def test_the_shared_call_is_cancelled_when_every_waiter_is() -> None:
    inflight: dict[Any, Flight] = {}
    upstream: Deferred[Any] = Deferred()
    cancelled: list[Any] = []
    upstream.addErrback(lambda f: cancelled.append(f.check(CancelledError)))

    async def call() -> Any:
        return await upstream

    a = single_flight(inflight, "k", call)
    b = single_flight(inflight, "k", call)
    for waiter in (a, b):
        waiter.addErrback(lambda f: f.trap(CancelledError))
    a.cancel()
    assert not cancelled and "k" in inflight  # b still wants the answer
    b.cancel()
    assert cancelled == [CancelledError] and inflight == {}
