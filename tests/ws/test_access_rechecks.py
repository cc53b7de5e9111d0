"""The access re-check timer keeps the promise of docs/websocket.md: a user who lost read
access hears ``access_revoked`` within ``WALLABY_WS_AUTH_RECHECK`` seconds, never later.

In-memory: a fake clock and an upstream that refuses every check.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from gateway.errors import CouchError
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
