"""Twisted's lines about connections it could not accept, summarised.

Out of file descriptors, Twisted accepts and at once closes each new connection, and logs
three lines for every one: anyone who can connect could then grow the log without limit
(about 700 KiB a second from one client in a loop). :class:`AcceptErrorSummary` keeps
those lines from the log and writes one warning per interval instead, with how many
connections were refused and the limit to raise (the gateway's for EMFILE, the system's
for ENFILE).
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
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

    The first refusal is reported at once; later ones at most once per ``interval``,
    and what is still counted when a burst ends is reported ``interval`` after the last
    report.

    Args:
        observer: Where every other event goes, and the summaries.
        clock: The reactor (its ``seconds`` and ``callLater``).
        interval: Seconds between two summaries at least.

    Attributes:
        refused: Connections refused so far (for ``/metrics`` and tests).
    """

    def __init__(self, observer: ILogObserver, clock: IReactorTime,
                 interval: float = 10.0) -> None:
        self._observer = observer
        self._clock = clock
        self._interval = interval
        self._last: float | None = None
        self._unreported: Counter[str] = Counter()
        self._flush: IDelayedCall | None = None
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
        now = self._clock.seconds()
        if self._last is None or now - self._last >= self._interval:
            self._report()
        elif self._flush is None:
            self._flush = self._clock.callLater(self._last + self._interval - now,
                                                self._report)

    def _report(self) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        if not self._unreported:
            return
        now = self._clock.seconds()
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        self._last = now
        reasons = ", ".join(f"{count} {name}" for name, count in self._unreported.items())
        hint = ""
        if "EMFILE" in self._unreported:
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            hint += (f" (EMFILE: the gateway has too many open files, limit {soft}; raise "
                     "it with ulimit -n, LimitNOFILE or docker --ulimit nofile)")
        if "ENFILE" in self._unreported:
            # The system's table, not this process's limit: ulimit -n would not help.
            hint += (" (ENFILE: the system has too many open files, the system-wide limit "
                     "fs.file-max is reached; find what holds them with lsof, or raise it "
                     "with sysctl fs.file-max)")
        self._unreported.clear()
        self._observer({
            "log_level": LogLevel.warn, "log_namespace": "gateway.accept",
            "log_time": time.time(), "log_system": "-",
            "log_format": "could not accept connections{since}: {reasons}{hint}",
            "since": since, "reasons": reasons, "hint": hint,
        })
