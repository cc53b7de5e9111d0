"""A broadcast's send loop shared between the reactor thread and a few helper threads.

Putting one small frame on 10,000 loopback sockets costs about 10 µs of CPU per
``send`` here, nearly all of it in the kernel (the loopback path runs the receiving
side of TCP and wakes the receiver), so a single thread needs about 100 ms to reach the
last socket. ``socket.send`` releases the GIL, so the sends of disjoint slices of the
sockets run in parallel: with two threads on two CPUs the last frame leaves after about
two thirds of the time.

The reactor thread takes the first slice itself and then waits for the helpers' slices.
It is busy for a shorter time than it would be doing the whole loop alone, and because it
runs nothing else in the meantime, no other code touches those sockets while the helpers
write to them: the order of frames on every socket is the same as with one loop.

The helpers are dedicated threads, not the reactor's thread pool: that pool also runs
spliced transfers, which may hold every one of its threads for as long as a download
lasts, and a broadcast must never wait behind them.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from socket import socket
from typing import TypeAlias

from twisted.application.service import Service
from twisted.logger import Logger

from gateway.eager_write import send_range

__all__ = ["MAX_AUTO_THREADS", "MIN_SLICE", "SendThreads", "cpu_quota", "usable_cpus"]

_log = Logger()

#: Sockets per thread below which waking a helper costs more than it saves (a wake-up
#: is worth a few sends).
MIN_SLICE = 256
#: The most threads ``ws_send_threads = 0`` picks, however many CPUs there are.
MAX_AUTO_THREADS = 4

#: How a helper reports a slice done: ``None``, or what it raised.
_Reply: TypeAlias = "queue.SimpleQueue[BaseException | None]"
#: A helper's job: the sockets, the frame, the results to fill in, the slice, the reply.
_Job = tuple[Sequence[socket], bytes, list[int], int, int, _Reply]


def usable_cpus(cgroups: Path = Path("/sys/fs/cgroup"),
                membership: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may use, at least 1.

    Its affinity mask, or its cgroup's CPU quota rounded up when that is smaller (a
    container limited to 1.5 CPUs gets 2).

    Args:
        cgroups: Where the cgroup file systems are mounted.
        membership: The process's cgroups (``/proc/self/cgroup``).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(cgroups, membership)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cpu_quota(cgroups: Path, membership: Path) -> float | None:
    """The CPU time per period the process's cgroups allow it, in CPUs.

    The smallest quota along the path to the root; ``None`` when none is set or nothing
    can be read. Reads cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``). Start-up only: the files are small and read once.
    """
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        number, controllers, path = [*line.split(":", 2), "", ""][:3]
        if number == "0" and not controllers:
            folders = [cgroups]
            read = _v2_quota
        elif "cpu" in controllers.split(","):
            folders = [cgroups / controllers, cgroups / "cpu"]
            read = _v1_quota
        else:
            continue
        for folder in folders:
            own = folder / path.strip("/")
            for level in [own, *own.parents]:
                quota = read(level)
                if quota is not None:
                    quotas.append(quota)
                if level == folder:
                    break
    return min(quotas) if quotas else None


def _v2_quota(folder: Path) -> float | None:
    try:
        limit, period = (folder / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        limit = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if limit <= 0 else limit / period
    except (OSError, ValueError, ZeroDivisionError):
        return None


class SendThreads(Service):
    """Sends one frame on many sockets from several threads at once.

    Args:
        threads: Threads that share a send loop, the reactor thread included (1: the
            reactor thread sends alone and no helper is started; 0: :func:`usable_cpus`,
            at most :data:`MAX_AUTO_THREADS`).
        min_slice: The fewest sockets given to one thread; a loop over fewer than twice
            as many runs on the reactor thread alone.
    """

    name = "send-threads"

    def __init__(self, threads: int = 0, *, min_slice: int = MIN_SLICE) -> None:
        if threads < 0:
            raise ValueError("threads must not be negative")
        if min_slice < 1:
            raise ValueError("min_slice must be positive")
        self.threads = threads or min(usable_cpus(), MAX_AUTO_THREADS)
        self.min_slice = min_slice
        self._helpers: list[tuple[threading.Thread, queue.SimpleQueue[_Job | None]]] = []
        #: Send loops split between threads so far.
        self.split_loops = 0

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Start the helper threads (``threads - 1`` of them)."""
        super().startService()  # type: ignore[no-untyped-call,unused-ignore]
        for number in range(1, self.threads):
            jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
            thread = threading.Thread(target=_serve, args=(jobs,), daemon=True,
                                      name=f"wallaby-send-{number}")
            thread.start()
            self._helpers.append((thread, jobs))

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        """End the helper threads; later loops run on the reactor thread alone.

        The helpers are idle whenever the reactor thread runs this (a send loop is over
        before the reactor does anything else), so they end at once.
        """
        super().stopService()  # type: ignore[no-untyped-call,unused-ignore]
        helpers, self._helpers = self._helpers, []
        for _, jobs in helpers:
            jobs.put(None)
        for thread, _ in helpers:
            thread.join()

    def send_each(self, sockets: Sequence[socket], data: bytes) -> list[int]:
        """Send ``data`` once on each socket; how much each one took, in their order.

        The same contract as :func:`gateway.eager_write.send_each` (a socket that takes
        part of ``data`` or fails gives what it took, possibly 0), with the loop split
        into slices sent at the same time. Call it from the reactor thread only.
        """
        sent = [0] * len(sockets)
        slices = min(len(self._helpers) + 1, len(sockets) // self.min_slice)
        if slices < 2:
            send_range(sockets, data, sent, 0, len(sockets))
            return sent
        self.split_loops += 1
        bounds = [len(sockets) * index // slices for index in range(slices + 1)]
        replies: list[_Reply] = []
        for (_, jobs), start, stop in zip(self._helpers, bounds[1:-1], bounds[2:], strict=False):
            reply: _Reply = queue.SimpleQueue()
            jobs.put((sockets, data, sent, start, stop, reply))
            replies.append(reply)
        try:
            send_range(sockets, data, sent, 0, bounds[1])
        finally:
            # Whatever happened here, no helper may still be sending once this returns.
            for reply in replies:
                failure = reply.get()
                if failure is not None:
                    # The sockets its helper did not reach count 0 and get the whole
                    # frame through their transports.
                    _log.error("a send thread failed: {error!r}", error=failure)
        return sent


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    """A helper thread: send the slices it is given until it is given ``None``."""
    while (job := jobs.get()) is not None:
        sockets, data, sent, start, stop, reply = job
        failure: BaseException | None = None
        try:
            send_range(sockets, data, sent, start, stop)
        except BaseException as exc:  # the reactor thread waits for a reply whatever happens
            failure = exc
        # Hold nothing of this broadcast while waiting for the next one (a batch frame
        # can be megabytes, the roster thousands of sockets).
        job = sockets = data = sent = None  # type: ignore[assignment]
        reply.put(failure)
        failure = reply = None  # type: ignore[assignment]
