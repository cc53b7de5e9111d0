"""Failed logins per account and client: password guessing stops before CouchDB sees it.

The general rate limit lets one client try ~50 passwords a second. Behind the gateway,
CouchDB (3.5 and later) sees every attempt come from the gateway's address, so its own
lockout of an account after a few failures would lock the real user out for everyone.
:class:`FailedLogins` counts failures per (client address, account name) and refuses
further attempts of that pair for a while, without asking CouchDB.

Every way of presenting a password goes through :meth:`FailedLogins.attempt`: ``POST
/api/v1/session`` and Basic credentials, on a REST request or a WebSocket handshake
(:func:`gateway.identity.identify`). One path, so each of them is refused once the pair
is locked out, counts its failures, and clears them on success.

Memory is bounded without letting an attacker erase a lockout by flooding failures of
made-up names. Pairs still counting (fewer than ``limit`` recent failures) are at most
``max_keys``; beyond that the least recently failed one is forgotten (a pair that has
not failed for ``window`` first), so a flood only ever costs a pair a few counted
failures. Locked pairs are kept apart and never evicted before their lockout ends.
Each needs ``limit`` failures within ``window``, and every failure passed the rate
limit, so one client can hold at most ``(burst + rate * window) / limit`` of them (3,040
with the default settings). Behind the hard ceiling ``max_locked`` (100,000: the
lockouts of some 30 clients failing at full rate for the whole window), a new lockout
is not given a guaranteed place: its pair stays with the counting ones, still refused
until a flood pushes it out. Refusing that bookkeeping is preferred over forgetting an
existing lockout to make room, and over growing without bound.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.errors import AuthenticationRequired, RateLimited, Unauthorized

__all__ = ["FailedLogins"]

_T = TypeVar("_T")


@dataclass
class FailedLogins:
    """Refuses an account's logins from a client after ``limit`` failures in ``window`` s.

    Args:
        clock: Current time in seconds (e.g. ``reactor.seconds``).
        limit: Failures allowed within ``window`` (``<= 0``: no limit).
        window: Seconds a failure counts for; the lockout ends when the oldest one of
            the last ``limit`` failures is this old.
        max_keys: Pairs not locked out remembered (the least recently failed ones are
            forgotten beyond it).
        max_locked: Locked-out pairs kept until their lockout ends (see the module's
            notes for what happens beyond it).
    """

    clock: Callable[[], float]
    limit: int = 5
    window: float = 300.0
    max_keys: int = 10_000
    max_locked: int = 100_000
    #: Pairs with fewer than ``limit`` recent failures, least recently failed first.
    _failures: OrderedDict[tuple[str, str], list[float]] = field(default_factory=OrderedDict)
    #: Locked-out pairs (their last ``limit`` failures), in the order they were locked.
    _locked: OrderedDict[tuple[str, str], list[float]] = field(default_factory=OrderedDict)
    #: Attempts being answered: per pair, how many of each password (by its hash).
    _trying: dict[tuple[str, str], dict[bytes, int]] = field(default_factory=dict)

    async def attempt(
        self, client: str, name: str, login: Callable[[], Awaitable[_T]], password: str = "",
    ) -> _T:
        """Run one login attempt of ``name`` from ``client`` under the guard.

        Refused without running ``login`` while the pair is locked out; a failure
        (``AuthenticationRequired`` or CouchDB's ``Unauthorized``) is counted, a success
        forgets the pair's failures. Other errors (CouchDB unreachable) count for nothing.
        Attempts with other passwords still being answered count as failures to come:
        guesses sent together would otherwise all pass before the first one failed. The
        same password sent many times at once (a page's parallel requests) counts once.
        An attempt whose client leaves (its handler cancelled) is answered and counted
        all the same, as it would be had the client waited: abandoned guesses count,
        and abandoned requests with the right password (a page closed) lock nobody out.

        Args:
            client: The client's address (its key for limits).
            name: The account name presented.
            login: Starts the attempt (asks CouchDB).
            password: The password tried (only its hash is kept, while it is answered).

        Returns:
            What ``login`` returned.

        Raises:
            RateLimited: The pair is locked out.
        """
        key = (client, name.lower())
        secret = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()[:16]
        trying = self._trying.get(key, {})
        self.check(client, name, in_flight=len(trying) - (secret in trying))
        trying[secret] = trying.get(secret, 0) + 1
        self._trying[key] = trying

        def answered(result: object) -> object:
            left = trying[secret] - 1
            if left:
                trying[secret] = left
            else:
                del trying[secret]
                if not trying:
                    self._trying.pop(key, None)
            if not isinstance(result, Failure):
                self.succeeded(client, name)
            elif result.check(AuthenticationRequired, Unauthorized):  # type: ignore[no-untyped-call]
                self.failed(client, name)
            return result

        async def run() -> _T:
            return await login()

        verification: Deferred[_T] = Deferred.fromCoroutine(run())
        verification.addBoth(answered)
        return await _shielded(verification)

    def check(self, client: str, name: str, in_flight: int = 0) -> None:
        """Raise when ``client`` may not try ``name`` now.

        Args:
            client: The client's key.
            name: The account name.
            in_flight: Attempts with other passwords not answered yet.

        Raises:
            RateLimited: Too many recent failures (with those in flight); ``retry_after``
                says when it may.
        """
        if self.limit <= 0:
            return
        recent = self._recent((client, name.lower()))
        if len(recent) >= self.limit:
            raise RateLimited(
                "too many failed logins for this account from this client",
                retry_after=max(1.0, recent[-self.limit] + self.window - self.clock()),
            )
        if len(recent) + in_flight >= self.limit:
            raise RateLimited(
                "too many logins for this account from this client are being checked",
                retry_after=1.0)

    def failed(self, client: str, name: str) -> None:
        """Count a failed attempt."""
        if self.limit <= 0:
            return
        key = (client, name.lower())
        recent = [*self._recent(key), self.clock()][-self.limit:]
        self._failures.pop(key, None)
        self._locked.pop(key, None)
        if len(recent) >= self.limit and self._room_to_lock():
            self._locked[key] = recent
            return
        self._failures[key] = recent
        cutoff = self.clock() - self.window
        # Least recently failed first: the pairs whose last failure is out of the
        # window (nothing left to count) come first, then the oldest still counting.
        while self._failures and (
            len(self._failures) > self.max_keys
            or next(iter(self._failures.values()))[-1] <= cutoff
        ):
            self._failures.popitem(last=False)

    def succeeded(self, client: str, name: str) -> None:
        """Forget the pair's failures (the right password was given)."""
        key = (client, name.lower())
        self._failures.pop(key, None)
        self._locked.pop(key, None)

    def _room_to_lock(self) -> bool:
        """Whether a new lockout fits below ``max_locked`` (ended ones are let go first)."""
        cutoff = self.clock() - self.window
        # The oldest lockouts come first: their first counted failure ends them.
        while self._locked and next(iter(self._locked.values()))[0] <= cutoff:
            self._locked.popitem(last=False)
        return len(self._locked) < self.max_locked

    def _recent(self, key: tuple[str, str]) -> list[float]:
        cutoff = self.clock() - self.window
        failures = self._locked.get(key) or self._failures.get(key) or []
        return [t for t in failures if t > cutoff]


def _shielded(verification: Deferred[_T]) -> Deferred[_T]:
    """A Deferred with ``verification``'s result whose cancelling leaves it running."""
    waiter: Deferred[_T] = Deferred()

    def relay(result: object) -> None:
        if not waiter.called:
            waiter.callback(result)  # type: ignore[arg-type]  # a Failure errbacks

    verification.addBoth(relay)
    return waiter
