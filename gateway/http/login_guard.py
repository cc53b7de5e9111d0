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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

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
        max_keys: Pairs remembered (least recently failed ones are forgotten).
    """

    clock: Callable[[], float]
    limit: int = 5
    window: float = 300.0
    max_keys: int = 10_000
    _failures: OrderedDict[tuple[str, str], list[float]] = field(default_factory=OrderedDict)

    async def attempt(
        self, client: str, name: str, login: Callable[[], Awaitable[_T]]
    ) -> _T:
        """Run one login attempt of ``name`` from ``client`` under the guard.

        Refused without running ``login`` while the pair is locked out; a failure
        (``AuthenticationRequired`` or CouchDB's ``Unauthorized``) is counted, a success
        forgets the pair's failures. Other errors (CouchDB unreachable) count for nothing.

        Args:
            client: The client's address (its key for limits).
            name: The account name presented.
            login: Starts the attempt (asks CouchDB).

        Returns:
            What ``login`` returned.

        Raises:
            RateLimited: The pair is locked out.
        """
        self.check(client, name)
        try:
            result = await login()
        except (AuthenticationRequired, Unauthorized):
            self.failed(client, name)
            raise
        self.succeeded(client, name)
        return result

    def check(self, client: str, name: str) -> None:
        """Raise when ``client`` may not try ``name`` now.

        Raises:
            RateLimited: Too many recent failures; ``retry_after`` says when it may.
        """
        if self.limit <= 0:
            return
        recent = self._recent((client, name.lower()))
        if len(recent) >= self.limit:
            raise RateLimited(
                "too many failed logins for this account from this client",
                retry_after=max(1.0, recent[-self.limit] + self.window - self.clock()),
            )

    def failed(self, client: str, name: str) -> None:
        """Count a failed attempt."""
        if self.limit <= 0:
            return
        key = (client, name.lower())
        recent = self._recent(key)
        recent.append(self.clock())
        self._failures[key] = recent[-self.limit:]
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, client: str, name: str) -> None:
        """Forget the pair's failures (the right password was given)."""
        self._failures.pop((client, name.lower()), None)

    def _recent(self, key: tuple[str, str]) -> list[float]:
        cutoff = self.clock() - self.window
        return [t for t in self._failures.get(key, ()) if t > cutoff]
