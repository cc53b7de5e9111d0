"""The access re-check timer keeps the promise of docs/websocket.md: a user who lost read
access hears ``access_revoked`` within ``WALLABY_WS_AUTH_RECHECK`` seconds, never later.

In-memory: a fake clock and an upstream that refuses every check.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.errors import AuthenticationRequired, CouchError
from gateway.ws.access import AccessRechecks


class _Refusing:
    async def request(self, method: str, segments: Any, **kwargs: Any) -> Any:
        raise CouchError("forbidden", status=403)


class _Watcher:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.revoked_at: float | None = None

    def access_revoked(self, db: str, exc: Any) -> None:
        if self.revoked_at is None:
            self.revoked_at = self.clock.seconds()

    def session_ended(self) -> None:
        pass


def test_a_revocation_is_found_within_the_interval_and_checks_are_spread() -> None:
    clock = Clock()
    interval = 30.0
    checks = AccessRechecks(clock, interval)
    watchers = [_Watcher(clock) for _ in range(40)]
    for i, watcher in enumerate(watchers):  # access already revoked when watching starts
        checks.watch(f"cred{i}", "db", _Refusing(), watcher)  # type: ignore[arg-type]
    for _ in range(int(interval * 1.5 * 10)):
        clock.advance(0.1)
    found = [w.revoked_at for w in watchers]
    step = 0.1  # the clock moves in steps: a check fires at the first one past its time
    assert all(at is not None and at <= interval + step for at in found), found
    # Pairs watched together do not all check at the same moment.
    assert len({round(at or 0, 1) for at in found}) > 10


class _Recording:
    """An upstream that records the auth of each check and answers with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.auth: Any = "handshake-auth"
        self.seen: list[Any] = []

    async def request(self, method: str, segments: Any, **kwargs: Any) -> Any:
        self.seen.append(self.auth)
        if self.status >= 400:
            raise CouchError("forbidden", status=self.status)
        return {}


class _Ending(_Watcher):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.ended = False

    def session_ended(self) -> None:
        self.ended = True


def _proxy_identity(roles: tuple[str, ...], auth: Any = "proxy-auth") -> Any:
    return SimpleNamespace(name="bob", roles=roles, auth=auth, credential="cookie")


def test_a_proxy_identity_whose_credential_no_longer_verifies_ends_the_session() -> None:
    """Proxy headers are believed without ``_users``: the credential behind them is what
    tells a deleted user (or a changed password) apart."""
    clock = Clock()
    asked: list[Any] = []

    async def reverify(identity: Any) -> Any:
        asked.append(identity.credential)
        raise AuthenticationRequired("invalid or expired credentials")

    checks = AccessRechecks(clock, 1.0, reverify=reverify)
    upstream, watcher = _Recording(), _Ending(clock)
    checks.watch("k", "db", upstream, watcher, identity=_proxy_identity(("editor",)))  # type: ignore[arg-type]
    clock.advance(1.0)
    assert asked == ["cookie"] and watcher.ended and upstream.seen == []


def test_a_proxy_identity_whose_roles_changed_checks_with_the_new_roles() -> None:
    clock = Clock()

    async def reverify(identity: Any) -> Any:
        return _proxy_identity((), auth="proxy-auth-without-editor")

    checks = AccessRechecks(clock, 1.0, reverify=reverify)
    upstream, watcher = _Recording(status=403), _Ending(clock)
    checks.watch("k", "db", upstream, watcher, identity=_proxy_identity(("editor",)))  # type: ignore[arg-type]
    clock.advance(1.0)
    assert upstream.auth == "proxy-auth-without-editor"
    assert upstream.seen == ["proxy-auth-without-editor"]
    assert watcher.revoked_at is not None and not watcher.ended


def test_an_identity_that_is_its_own_credential_is_not_verified_again() -> None:
    """forward and jwt modes: the check's ``GET /db`` sends the credential itself."""
    clock = Clock()
    asked: list[Any] = []

    async def reverify(identity: Any) -> Any:
        asked.append(identity)
        return identity

    checks = AccessRechecks(clock, 1.0, reverify=reverify)
    upstream, watcher = _Recording(), _Ending(clock)
    identity = SimpleNamespace(name="bob", roles=(), auth="cookie", credential=None)
    checks.watch("k", "db", upstream, watcher, identity=identity)  # type: ignore[arg-type]
    clock.advance(1.0)
    assert asked == [] and upstream.seen == ["handshake-auth"] and not watcher.ended


class _Allowing:
    def __init__(self) -> None:
        self.asked = 0

    async def request(self, method: str, segments: Any, **kwargs: Any) -> Any:
        self.asked += 1
        return {}


def test_a_pair_from_a_cached_authorization_is_checked_an_interval_after_the_real_check() -> None:
    """A subscribe answered from ``AuthorizationCache`` (no pair behind the entry: e.g.
    after a ``too_many_feeds`` refusal) must not restart the interval: the promise is
    measured from the last request that really asked."""
    from gateway.ws.access import AuthorizationCache

    clock = Clock()
    interval = 3.0
    cache = AuthorizationCache(clock, ttl=interval)
    checks = AccessRechecks(clock, interval, jitter=0.0, on_forgotten=cache.invalidate)
    upstream = _Allowing()
    Deferred.fromCoroutine(cache.authorize("k", "db", upstream))  # type: ignore[arg-type]
    clock.advance(2.5)
    cached = Deferred.fromCoroutine(cache.authorize("k", "db", upstream))  # type: ignore[arg-type]
    assert upstream.asked == 1 and cached.result == 0.0
    watcher = _Watcher(clock)
    checks.watch("k", "db", _Refusing(), watcher, checked_at=cached.result)  # type: ignore[arg-type]
    clock.advance(0.6)
    assert watcher.revoked_at == 3.1, watcher.revoked_at


def test_a_pair_forgotten_forgets_its_cached_authorization() -> None:
    """With no subscription left nothing re-checks the pair: the next subscribe asks."""
    from gateway.ws.access import AuthorizationCache

    clock = Clock()
    cache = AuthorizationCache(clock, ttl=5.0)
    checks = AccessRechecks(clock, 30.0, on_forgotten=cache.invalidate)
    upstream = _Allowing()
    asked = Deferred.fromCoroutine(cache.authorize("k", "db", upstream))  # type: ignore[arg-type]
    watcher = _Watcher(clock)
    checks.watch("k", "db", upstream, watcher, checked_at=asked.result)  # type: ignore[arg-type]
    Deferred.fromCoroutine(cache.authorize("k", "db", upstream))  # type: ignore[arg-type]
    assert upstream.asked == 1
    checks.unwatch("k", "db", watcher)
    Deferred.fromCoroutine(cache.authorize("k", "db", upstream))  # type: ignore[arg-type]
    assert upstream.asked == 2
