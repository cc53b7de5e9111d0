"""Twisted's lines about connections it could not accept, summarised.

Out of file descriptors, Twisted accepts and at once closes each new connection, and logs
three lines for every one: anyone who can connect could then grow the log without limit
(about 700 KiB a second from one client in a loop). :class:`AcceptErrorSummary` keeps
those lines from the log and writes one warning per interval instead, with how many
connections were refused and the limit to raise.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.logger import ILogObserver, LogLevel
from zope.interface import implementer

__all__ = ["AcceptErrorSummary"]

#: ``log_format`` of Twisted's per-connection lines (``twisted.internet.tcp``).
_PER_CONNECTION = frozenset({
    "EMFILE encountered; releasing reserved file descriptor.",
    "EMFILE recovery: Closed socket from {address}",
    "Re-reserving EMFILE recovery file descriptor.",
    "Could not accept new connection ({acceptError})",
})
#: The one that marks a refused connection (the others come with it).
_REFUSED = frozenset({
    "EMFILE recovery: Closed socket from {address}",
    "Could not accept new connection ({acceptError})",
})


@implementer(ILogObserver)
class AcceptErrorSummary:
    """A log observer in front of ``observer`` that summarises refused connections.

    Args:
        observer: Where every other event goes, and the summaries.
        clock: Seconds, monotonic enough (the reactor's ``seconds``).
        interval: Seconds between two summaries at most one per.

    Attributes:
        refused: Connections refused so far (for ``/metrics`` and tests).
    """

    def __init__(self, observer: ILogObserver, clock: Callable[[], float],
                 interval: float = 10.0) -> None:
        self._observer = observer
        self._clock = clock
        self._interval = interval
        self._last: float | None = None
        self._unreported: Counter[str] = Counter()
        self.refused = 0

    def __call__(self, event: dict[str, Any]) -> None:
        """Pass an event on, unless it is one of Twisted's per-connection lines."""
        if event.get("log_format") not in _PER_CONNECTION:
            self._observer(event)
            return
        if event.get("log_format") not in _REFUSED:
            return
        self.refused += 1
        self._unreported[str(event.get("acceptError", "EMFILE"))] += 1
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        self._last = now
        reasons = ", ".join(f"{count} {name}" for name, count in self._unreported.items())
        self._unreported.clear()
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._observer({
            "log_level": LogLevel.warn, "log_namespace": "gateway.accept",
            "log_time": event.get("log_time"), "log_system": "-",
            "log_format": "could not accept connections{since}: {reasons} (EMFILE: the "
                          "gateway has too many open files, limit {limit}; raise it with "
                          "ulimit -n, LimitNOFILE or docker --ulimit nofile)",
            "since": since, "reasons": reasons, "limit": soft,
        })
