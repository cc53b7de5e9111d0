"""Shared access checks of the live-changes endpoint.

* :func:`credential_key` — a hash of the credential a handshake presented (never the
  credential itself), the key connections of the same caller share.
* :class:`SharedIdentities` — one upstream transport (hence one auth object) per
  credential key, shared by every connection of that caller: a cookie session CouchDB
  refreshes on any of their requests is refreshed for all of them.
* :class:`AccessRechecks` — the periodic access re-check, once per distinct
  (credential key, database) pair instead of once per connection: one jittered timer
  and one ``GET /<db>`` per pair per interval, its outcome fanned out to every
  connection of the pair; a pair with no connections left is forgotten. A new pair's
  first check is due an interval after the authorization it starts from was asked
  upstream (not after the pair began: it may start from a cached one). When the
  upstream identity is not the credential CouchDB verified (``auth_mode=proxy``: proxy
  headers, which CouchDB believes without reading ``_users``), that credential is
  verified again first (:data:`Reverify`).
* :class:`AuthorizationCache` — the subscribe-time ``GET /<db>`` as the user, cached
  per (credential key, database) for a few seconds, single-flight.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from gateway.couch.auth import ProxyAuth
from gateway.couch.transport import CouchTransport
from gateway.errors import AuthenticationRequired, CouchError, CouchUnreachable
from gateway.singleflight import Flight, single_flight

__all__ = [
    "AccessRechecks",
    "AccessWatcher",
    "AuthorizationCache",
    "Reverify",
    "SharedIdentities",
    "credential_key",
]

_log = Logger(namespace="gateway.ws.access")

#: Verifies again the credential behind an identity (``gateway.identity.reverify``):
#: the identity as CouchDB sees it now; raises ``AuthenticationRequired`` when the
#: credential no longer authenticates.
Reverify = Callable[[Any], Awaitable[Any]]


def credential_key(headers: Mapping[str, str], cookies: Mapping[str, str], cookie_name: str,
                   name: str | None, roles: Sequence[str] = ()) -> str:
    """A SHA-256 of the credential material of a handshake and the verified name and roles.

    The roles count: a proxy identity's upstream headers carry them, so a handshake
    after a role change must not share the transport of the old roles.
    """
    material = "\0".join((
        headers.get("authorization", ""),
        cookies.get(cookie_name, ""),
        name or "",
        json.dumps(list(roles)),
    ))
    return hashlib.sha256(material.encode("utf-8", "replace")).hexdigest()


class SharedIdentities:
    """One upstream transport per credential key, while connections hold it.

    Args:
        base: The service transport (its pool and settings are shared).
    """

    def __init__(self, base: CouchTransport) -> None:
        self.base = base
        self._entries: dict[str, tuple[CouchTransport, int]] = {}

    def acquire(self, key: str, auth: Any) -> CouchTransport:
        """The transport of ``key`` (made with ``auth`` for its first holder)."""
        entry = self._entries.get(key)
        if entry is None:
            transport = self.base.with_auth(auth)
            self._entries[key] = (transport, 1)
            return transport
        self._entries[key] = (entry[0], entry[1] + 1)
        if isinstance(auth, ProxyAuth):
            # Built from the verification this holder just had: a re-check may have moved
            # the shared transport to other roles since, which this one supersedes.
            entry[0].auth = auth
        return entry[0]

    def release(self, key: str) -> None:
        """Drop one holder of ``key``; forgotten with the last one."""
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry[1] <= 1:
            del self._entries[key]
        else:
            self._entries[key] = (entry[0], entry[1] - 1)

    def __len__(self) -> int:
        return len(self._entries)


class AccessWatcher(Protocol):
    """A connection whose access to databases is re-checked."""

    def access_revoked(self, db: str, exc: CouchError) -> None:
        """The caller may no longer read ``db``."""

    def session_ended(self) -> None:
        """The credentials no longer authenticate at all."""


@dataclass(eq=False)
class _Pair:
    key: str
    db: str
    transport: CouchTransport
    #: Who the pair's connections act as (its ``credential`` is verified again).
    identity: Any = None
    watchers: set[AccessWatcher] = field(default_factory=set)
    timer: IDelayedCall | None = None
    running: Deferred[None] | None = None


class AccessRechecks:
    """Periodic access re-checks per (credential key, database) pair.

    Args:
        clock: The reactor's clock.
        interval: Seconds between the checks of a pair.
        jitter: Each delay is ``interval`` times a random factor in ``[1 - jitter, 1]``
            (pairs created together do not check together, and none waits longer than
            the interval the documentation promises).
        on_revoked: Called with ``(key, db)`` when a check is refused (401/403/404) or
            the credential no longer authenticates, before the watchers hear of it
            (e.g. to forget cached authorizations).
        on_forgotten: Called with ``(key, db)`` when a pair is forgotten (its last
            watcher left, or shutdown): nothing re-checks it any more, so an
            authorization cached for it must not outlive it.
        reverify: Verifies an identity's ``credential`` again (see :meth:`watch`).
    """

    def __init__(self, clock: IReactorTime, interval: float, *, jitter: float = 0.2,
                 on_revoked: Callable[[str, str], None] | None = None,
                 on_forgotten: Callable[[str, str], None] | None = None,
                 reverify: Reverify | None = None) -> None:
        self.clock = clock
        self.interval = interval
        self.jitter = jitter
        self.on_revoked = on_revoked
        self.on_forgotten = on_forgotten
        self.reverify = reverify
        self.checks = 0
        self._pairs: dict[tuple[str, str], _Pair] = {}
        #: Per credential key, the latest re-verification and when it was answered: the
        #: pairs of one credential (one per database) share it for an interval.
        self._verified: dict[str, tuple[float, Any]] = {}
        #: Pairs per credential key: its re-verification is forgotten with its last pair.
        self._pairs_of: dict[str, int] = {}

    @property
    def pairs(self) -> int:
        """Distinct (credential key, database) pairs being checked."""
        return len(self._pairs)

    def _delay(self) -> float:
        return max(0.01, self.interval * (1 - random.uniform(0, self.jitter)))  # noqa: S311

    def watch(self, key: str, db: str, transport: CouchTransport, watcher: AccessWatcher,
              identity: Any = None, checked_at: float | None = None) -> None:
        """Re-check ``db`` for ``watcher`` (idempotent).

        Args:
            key: The credential key of the watcher's connection.
            db: The database.
            transport: The connection's upstream transport (shared per key).
            watcher: Told of a refusal.
            identity: Who the connection acts as. When its ``credential`` is set (the
                upstream ``auth`` is not what CouchDB verified), each check first
                verifies that credential again: gone → the session ended; other roles →
                ``transport`` acts with the new upstream ``auth`` from then on.
            checked_at: When the authorization the watcher subscribed on was asked
                upstream (``AuthorizationCache.authorize``): a new pair's first check
                is due an interval after it, so a user who lost access between that
                check and a subscribe answered from the cache hears of it within the
                interval.
        """
        if self.interval <= 0:
            return
        pair = self._pairs.get((key, db))
        if pair is None:
            pair = _Pair(key, db, transport, identity)
            self._pairs[(key, db)] = pair
            self._pairs_of[key] = self._pairs_of.get(key, 0) + 1
            delay = self._delay()
            if checked_at is not None:
                delay = max(0.01, delay - (self.clock.seconds() - checked_at))
            pair.timer = self.clock.callLater(delay, self._run, pair)
        pair.watchers.add(watcher)

    def unwatch(self, key: str, db: str, watcher: AccessWatcher) -> None:
        """Stop re-checking ``db`` for ``watcher``; the pair goes with its last watcher."""
        pair = self._pairs.get((key, db))
        if pair is None:
            return
        pair.watchers.discard(watcher)
        if not pair.watchers:
            self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        if self._pairs.get((pair.key, pair.db)) is pair:
            del self._pairs[(pair.key, pair.db)]
            left = self._pairs_of.pop(pair.key, 1) - 1
            if left:
                self._pairs_of[pair.key] = left
            else:
                self._verified.pop(pair.key, None)
            if self.on_forgotten is not None:
                self.on_forgotten(pair.key, pair.db)
        if pair.timer is not None and pair.timer.active():
            pair.timer.cancel()
        pair.timer = None
        if pair.running is not None:
            pair.running.cancel()

    def stop(self) -> None:
        """Forget every pair (shutdown)."""
        for pair in list(self._pairs.values()):
            self._forget(pair)

    def _run(self, pair: _Pair) -> None:
        pair.timer = None
        running = Deferred.fromCoroutine(self._check(pair))
        if running.called:
            self._reschedule(pair)
            return
        pair.running = running

        def done(result: Any) -> None:
            pair.running = None
            self._reschedule(pair)
            if isinstance(result, Failure) and not isinstance(result.value, CancelledError):
                _log.failure("access re-check", result, LogLevel.error)

        running.addBoth(done)

    def _reschedule(self, pair: _Pair) -> None:
        if self._pairs.get((pair.key, pair.db)) is pair and pair.timer is None:
            pair.timer = self.clock.callLater(self._delay(), self._run, pair)

    async def _check(self, pair: _Pair) -> None:
        self.checks += 1
        if not await self._credential_verifies(pair):
            return
        try:
            await pair.transport.request("GET", [pair.db])
            return
        except CouchError as exc:
            if isinstance(exc, CouchUnreachable) or exc.status not in (401, 403, 404):
                return
            refusal = exc
        if self.on_revoked is not None:
            self.on_revoked(pair.key, pair.db)
        if refusal.status == 401 and not await still_authenticated(pair.transport):
            # The credentials no longer authenticate (an expired session): every
            # connection of this caller is closed (4001) with its resume seqs.
            for watcher in list(pair.watchers):
                watcher.session_ended()
            return
        for watcher in list(pair.watchers):
            watcher.access_revoked(pair.db, refusal)

    async def _credential_verifies(self, pair: _Pair) -> bool:
        """Verify the pair's credential again, when its upstream identity is not it.

        Returns:
            False when it no longer authenticates (its watchers were told).
        """
        identity = pair.identity
        if self.reverify is None or getattr(identity, "credential", None) is None:
            return True
        recent = self._verified.get(pair.key)
        if recent is not None and self.clock.seconds() - recent[0] < self.interval:
            now = recent[1]  # another database's check of this credential just asked
        else:
            try:
                now = await self.reverify(identity)
            except AuthenticationRequired:
                now = None
            except CouchError:
                return True  # CouchDB could not say: the next check asks again
            self._verified[pair.key] = (self.clock.seconds(), now)
        if now is None or now.name != identity.name:
            if self.on_revoked is not None:
                self.on_revoked(pair.key, pair.db)
            for watcher in list(pair.watchers):
                watcher.session_ended()
            return False
        # Every pair of this key shares the transport, whose roles another pair (or a
        # new handshake) may have changed since: it always acts as verified just now.
        pair.transport.auth = now.auth
        pair.identity = now
        return True


async def still_authenticated(transport: CouchTransport) -> bool:
    """Whether CouchDB still knows who the credentials are.

    A 401 may only mean "not a member": pouchdb-server answers non-members so, where
    CouchDB says 403.
    """
    try:
        session = await transport.request("GET", ["_session"])
    except CouchError as exc:
        return exc.status != 401
    name = (session.get("userCtx") or {}).get("name") if isinstance(session, dict) else None
    return bool(name)


class AuthorizationCache:
    """Successful subscribe authorizations per (credential key, database), for ``ttl`` s.

    Concurrent authorizations of one pair share one upstream request (single-flight);
    a refusal is not cached (the next subscribe asks again), and a re-check refusal or
    the end of the pair's re-checks (its last subscription went) forgets the pair
    (:meth:`invalidate`): while nothing re-checks a pair, nothing may answer for it.

    Args:
        clock: The reactor's clock.
        ttl: Seconds a successful authorization is reused (0: never).
        max_entries: Oldest entries are dropped beyond this size.
    """

    def __init__(self, clock: IReactorTime, ttl: float = 5.0, max_entries: int = 4096) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        #: When each pair's successful authorization was asked upstream.
        self._ok: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._inflight: dict[Any, Flight] = {}

    def invalidate(self, key: str, db: str) -> None:
        """Forget a pair (its access was refused, or is no longer re-checked)."""
        self._ok.pop((key, db), None)

    async def authorize(self, key: str, db: str, transport: CouchTransport) -> float:
        """``GET /<db>`` as the user, unless one was asked less than ``ttl`` s ago.

        Returns:
            When the upstream was asked (the reactor's seconds): what the answer is as
            old as, for the first re-check of the subscription (``AccessRechecks.watch``).

        Raises:
            CouchError: The upstream refused (or could not be asked).
        """
        pair = (key, db)
        asked = self._ok.get(pair)
        if asked is not None:
            if self.clock.seconds() - asked < self.ttl:
                return asked
            del self._ok[pair]

        async def ask() -> float:
            asked = self.clock.seconds()
            await transport.request("GET", [db])
            if self.ttl > 0:
                self._ok[pair] = asked
                self._ok.move_to_end(pair)
                while len(self._ok) > self.max_entries:
                    self._ok.popitem(last=False)
            return asked

        return await single_flight(self._inflight, pair, ask)
