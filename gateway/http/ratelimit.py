"""Per-client rate limiting: one token bucket per client address, injectable clock."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import RateLimited

__all__ = ["RateLimiter"]


@dataclass
class RateLimiter:
    """Token buckets: ``rate`` tokens per second, at most ``burst`` saved up.

    Args:
        rate: Sustained requests per second per client (``<= 0`` disables limiting).
        burst: Bucket size.
        clock: Current time in seconds (e.g. ``reactor.seconds``).
        max_clients: Buckets kept (least recently used ones are dropped).
    """

    rate: float
    burst: int
    clock: Callable[[], float]
    max_clients: int = 10_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def check(self, client: str) -> None:
        """Take one token for ``client``.

        Raises:
            RateLimited: The bucket is empty; ``retry_after`` says when a token is due.
        """
        if self.rate <= 0:
            return
        now = self.clock()
        capacity = float(max(self.burst, 1))
        tokens, last = self._buckets.get(client, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            raise RateLimited(
                "too many requests from this client", retry_after=(1.0 - tokens) / self.rate
            )
        self._buckets[client] = (tokens - 1.0, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
