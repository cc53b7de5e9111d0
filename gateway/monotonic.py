"""The gateway's reactor measures time on the monotonic clock, not the wall clock.

Twisted's reactors schedule every ``callLater`` on ``time.time``, so a step of the
system clock (NTP correcting a clock at boot, a virtual machine resumed, an operator's
``date -s``) moves every pending timer with it. A step back of an hour holds every
deadline an hour longer: the header timeout that stops slow-loris clients, the upstream
request timeout, a login lockout, WebSocket pings and access re-checks. A step forward
fires them all at once: requests in flight are answered 504 and kept-alive connections
are cut. Twisted leaves the choice to the application (twisted/twisted#2424) because
code may read ``reactor.seconds()`` as a date; the gateway only measures durations with
it, and its logs take their timestamps from ``time.time`` themselves.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["use_monotonic_clock"]


def use_monotonic_clock(reactor: Any) -> None:
    """Make ``reactor`` schedule its timed calls on ``time.monotonic``.

    Args:
        reactor: A Twisted reactor (``ReactorBase``) that has no timed call yet.

    Raises:
        RuntimeError: Timed calls are already scheduled; they were placed on the
            wall clock and would fire hours or decades off.
    """
    if reactor.getDelayedCalls():
        raise RuntimeError("the reactor's clock must be chosen before anything is scheduled")
    reactor.seconds = time.monotonic
