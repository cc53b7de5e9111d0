"""Exponential backoff with jitter for reconnecting feeds (pure, no clock)."""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delays before successive reconnection attempts.

    The n-th delay (from 0) is drawn uniformly from ``[d/2, d]`` where
    ``d = min(cap, initial * factor**n)`` ("equal jitter"): it grows exponentially, never
    exceeds ``cap``, and spreads the reconnections of many feeds after a server restart.

    Args:
        initial: The first delay's upper bound, in seconds.
        factor: Growth per attempt.
        cap: The largest delay.
        random: A source of floats in ``[0, 1)`` (injectable for tests).
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    random: Callable[[], float] = field(default=_random.random)
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        exponent = min(self.attempts, 64)
        bound = min(self.cap, self.initial * self.factor**exponent)
        self.attempts += 1
        return bound / 2 + self.random() * bound / 2

    def reset(self) -> None:
        """Start over after a successful connection."""
        self.attempts = 0
