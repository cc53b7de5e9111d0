"""How long each upstream CouchDB call takes, recorded per route for ``/metrics``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from gateway.http.metrics import Metrics

__all__ = ["TimedCall", "UpstreamTimer"]

T = TypeVar("T")


class TimedCall(Protocol):
    """Awaits an upstream call and records how long it took, for the request's route."""

    def __call__(self, request: Any, call: Awaitable[T], /) -> Awaitable[T]:
        """The call's result."""


class UpstreamTimer:
    """Awaits upstream calls and records their latency under the request's route.

    An instance is a :class:`TimedCall`.

    Args:
        metrics: Where the latencies go (``observe_upstream``).
        clock: The current time in seconds (``reactor.seconds``).
    """

    def __init__(self, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, request: Any, call: Awaitable[T], /) -> T:
        """Await ``call`` and record how long it took, failed or not.

        Args:
            request: The client's request; its ``route`` labels the latency
                (``unmatched`` before it has one).
            call: The upstream call.

        Returns:
            The call's result.
        """
        started = self.clock()
        try:
            return await call
        finally:
            route = getattr(request, "route", "unmatched")
            self.metrics.observe_upstream(route, self.clock() - started)
