"""Single-flight: concurrent callers of the same key share one in-flight call.

Usage::

    inflight: dict[str, list[Deferred[T]]] = {}
    result = await single_flight(inflight, key, lambda: verify(key))

The first caller starts the call; callers arriving while it is in flight wait for the
same result (or failure). Each caller gets its own Deferred: cancelling one waiter
(e.g. a handshake that timed out) does not disturb the others; the shared call is
cancelled only when every waiter has been cancelled (nobody wants the answer any more:
e.g. the only client went away, and the upstream request is abandoned with it).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["Flight", "single_flight"]

T = TypeVar("T")


class Flight:
    """One shared call in flight and the callers waiting for it."""

    def __init__(self) -> None:
        self.waiters: list[Deferred[Any]] = []
        self.call: Deferred[Any] | None = None


def single_flight(
    inflight: dict[Any, Flight],
    key: Hashable,
    start: Callable[[], Coroutine[Any, Any, T]],
) -> Deferred[T]:
    """A Deferred of ``start()``'s result, shared with concurrent callers of ``key``."""
    flight = inflight.get(key)
    joining = flight is not None
    if flight is None:
        flight = Flight()
        inflight[key] = flight
    current = flight

    def cancelled(waiter: Deferred[Any]) -> None:
        if waiter in current.waiters:
            current.waiters.remove(waiter)
        if not current.waiters:
            if inflight.get(key) is current:
                del inflight[key]
            if current.call is not None:
                current.call.cancel()

    waiter: Deferred[T] = Deferred(cancelled)
    current.waiters.append(waiter)
    if joining:
        return waiter

    def finish(result: Any) -> None:
        current.call = None
        if inflight.get(key) is current:
            del inflight[key]
        waiters, current.waiters = current.waiters, []
        for each in waiters:
            if each.called:
                continue
            if isinstance(result, Failure):
                each.errback(result)
            else:
                each.callback(result)

    call: Deferred[Any] = Deferred.fromCoroutine(start())
    if not call.called:
        current.call = call
    call.addBoth(finish)
    return waiter
