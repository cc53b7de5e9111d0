"""Garbage collection: long-lived objects frozen, every pause measured, long ones logged.

CPython's cycle collector stops the whole process while it walks the objects it tracks.
A full collection walks all of them: ~72,000 after start-up (24 ms here) and ~40 more per
open WebSocket connection, so a gateway holding 10,000 connections paused 250 to 420 ms
(BENCHMARKS.md). Nothing is lost in a pause, but every request and delivery waits.

:class:`GarbageCollection` freezes what exists once the gateway has started (modules,
classes, routes, settings: they live as long as the process, so walking them again and
again finds nothing; ``gc.freeze``), measures every collection through ``gc.callbacks``
for ``/metrics``, and logs a warning for any pause of ``warn_after`` seconds or more.

A full collection that paused ``freeze_after`` seconds or more freezes what survived it
too, at the moment it ends, when every unreachable cycle has just been freed: mostly
WebSocket connections, which live for minutes to hours. The next full collection walks
only what came after. A frozen object is still freed when its last reference goes, and
closed connections leave no reference cycle (``tests/ws/test_connection_memory.py``).
An object that dies inside a cycle while frozen (a REST request in flight at the freeze:
Klein and Werkzeug make a cycle of every request) waits for the first full collection
``refreeze_every`` seconds after the freeze, which gets everything back first ("thaws").

Three rules keep that from growing memory under REST load, where long full collections
come every second or so and each is full of dying request cycles (a fault audit saw 36
freezes in 30 s and RSS 67 → 219 MB): nothing is frozen while a REST request is in flight
(``quiet``: those are the cycles that would die frozen); a collection that freed more
than ``max_garbage_share`` of what survived it freezes nothing (the heap is churning, not
holding long-lived connections: 16 to 50 % under REST load, 0 % with 10,000 idle
WebSockets); and at most one freeze happens per ``min_freeze_interval`` seconds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from gateway.http.metrics import Histogram

__all__ = ["GarbageCollection"]

_log = Logger(namespace="gateway.gc")

GENERATIONS = (0, 1, 2)


class GarbageCollection(Service):
    """Freezes start-up objects and measures collections while running.

    Args:
        timer: A monotonic clock in seconds (``time.perf_counter``).
        warn_after: A pause at least this long (seconds) is logged as a warning.
        freeze_after: A full collection at least this long (seconds) freezes what
            survived it (``None``: only start-up objects are frozen).
        refreeze_every: Seconds after such a freeze at which the next full collection
            walks every object again, frozen or not.
        max_garbage_share: A long full collection that freed more than this share of the
            objects that survived it freezes nothing.
        min_freeze_interval: Seconds from one freeze to the next one at the earliest.
        quiet: Whether no REST request is in flight now (freezing waits for that).
    """

    def __init__(
        self,
        timer: Callable[[], float] = time.perf_counter,
        *,
        warn_after: float = 0.1,
        freeze_after: float | None = 0.05,
        refreeze_every: float = 3600.0,
        max_garbage_share: float = 0.1,
        min_freeze_interval: float = 1.0,
        quiet: Callable[[], bool] = lambda: True,
    ) -> None:
        self.timer = timer
        self.warn_after = warn_after
        self.freeze_after = freeze_after
        self.refreeze_every = refreeze_every
        self.max_garbage_share = max_garbage_share
        self.min_freeze_interval = min_freeze_interval
        self.quiet = quiet
        #: Long full collections that froze nothing: churning heap, or too soon.
        self.freezes_skipped = 0
        self._last_freeze_at: float | None = None
        #: Full collections whose survivors were frozen (after start-up's).
        self.freezes = 0
        #: Full collections that walked the frozen objects again.
        self.thaws = 0
        self._first_freeze_at: float | None = None
        self._thawing = False
        self.pauses = {generation: Histogram() for generation in GENERATIONS}
        self.longest = dict.fromkeys(GENERATIONS, 0.0)
        self._started_at: float | None = None

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Freeze what start-up made and start measuring."""
        super().startService()  # type: ignore[no-untyped-call]
        gc.freeze()
        gc.callbacks.append(self._on_collection)

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        """Stop measuring and let the collector see the frozen objects again."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        gc.unfreeze()
        super().stopService()  # type: ignore[no-untyped-call]

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = self.timer()
            if (info["generation"] == 2 and self._first_freeze_at is not None
                    and self._started_at - self._first_freeze_at >= self.refreeze_every):
                gc.unfreeze()
                self.thaws += 1
                self._first_freeze_at = None
                self._thawing = True
            return
        if self._started_at is None:
            return
        took, self._started_at = self.timer() - self._started_at, None
        generation = info["generation"]
        self.pauses[generation].observe(took)
        self.longest[generation] = max(self.longest[generation], took)
        thawed, self._thawing = self._thawing, False
        if generation == 2 and self.freeze_after is not None and (
                thawed or took >= self.freeze_after):
            # After a thaw, start-up's objects are frozen again however short it was.
            if thawed or self._worth_freezing(info.get("collected", 0)):
                gc.freeze()
                self.freezes += 1
                self._last_freeze_at = self.timer()
                if self._first_freeze_at is None:
                    self._first_freeze_at = self._last_freeze_at
            else:
                self.freezes_skipped += 1
        if took >= self.warn_after:
            _log.warn(
                "garbage collection of generation {generation} paused the gateway for "
                "{milliseconds:.0f} ms ({collected} objects freed)",
                generation=generation, milliseconds=took * 1000,
                collected=info.get("collected", 0),
            )

    def _worth_freezing(self, collected: int) -> bool:
        """Whether the survivors of a long full collection are long-lived enough to freeze."""
        if not self.quiet():
            return False
        if (self._last_freeze_at is not None
                and self.timer() - self._last_freeze_at < self.min_freeze_interval):
            return False
        survivors = len(gc.get_objects(generation=2))  # ~10 ns each, after a long pause
        return collected <= self.max_garbage_share * survivors

    def prometheus(self) -> str:
        """Pause histograms and the longest pause per generation, and the frozen objects."""
        lines = [
            "# HELP wallaby_gc_pause_seconds Pauses of the cycle garbage collector.",
            "# TYPE wallaby_gc_pause_seconds histogram",
        ]
        for generation in GENERATIONS:
            labels = (("generation", str(generation)),)
            lines += self.pauses[generation].lines("wallaby_gc_pause_seconds", labels)
        lines += [
            "# HELP wallaby_gc_pause_max_seconds The longest pause since start, by generation.",
            "# TYPE wallaby_gc_pause_max_seconds gauge",
            *(f'wallaby_gc_pause_max_seconds{{generation="{generation}"}} {seconds:.6f}'
              for generation, seconds in self.longest.items()),
            "# HELP wallaby_gc_frozen_objects Objects exempt from collection (start-up's,"
            " and the survivors of long full collections).",
            "# TYPE wallaby_gc_frozen_objects gauge",
            f"wallaby_gc_frozen_objects {gc.get_freeze_count()}",
            "# HELP wallaby_gc_freezes_total Long full collections whose survivors were frozen.",
            "# TYPE wallaby_gc_freezes_total counter",
            f"wallaby_gc_freezes_total {self.freezes}",
            "# HELP wallaby_gc_thaws_total Full collections that walked the frozen objects again.",
            "# TYPE wallaby_gc_thaws_total counter",
            f"wallaby_gc_thaws_total {self.thaws}",
            "# HELP wallaby_gc_freezes_skipped_total Long full collections that froze nothing"
            " (they freed much garbage, or came too soon after a freeze).",
            "# TYPE wallaby_gc_freezes_skipped_total counter",
            f"wallaby_gc_freezes_skipped_total {self.freezes_skipped}",
        ]
        return "\n".join(lines) + "\n"
