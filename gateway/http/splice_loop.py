"""The loop of zero-copy transfers: splice(2) from one socket to another, in the kernel.

:func:`splice_loop` moves exactly ``length`` bytes from a readable socket through a pipe
into a writable one, without the bytes entering Python, and blocks the calling thread
until they have moved: :class:`~gateway.http.splice_relay.Splicer` runs it in a worker
thread of the reactor's threadpool, on duplicated descriptors. An ``eventfd`` wakes it
to stop it (the client went away, shutdown); no progress for ``stall_timeout`` ends it;
its exceptions name the end that failed (:class:`UpstreamClosed`, :class:`ClientGone`).
Plain ``os`` and ``select`` calls, no reactor: it is tested on socket pairs, without
Twisted.
"""

from __future__ import annotations

import fcntl
import os
import select
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

__all__ = [
    "MIN_SPLICE_BYTES", "PIPE_SIZE", "ClientGone", "PeerLost", "Progress", "SpliceStalled",
    "SpliceStopped", "UpstreamClosed", "available", "splice_loop",
]

#: Smallest body worth a thread and a pipe.
MIN_SPLICE_BYTES = 1 << 20
#: Pipe capacity asked for (Linux caps it at /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE = 1 << 20

_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_MORE = getattr(os, "SPLICE_F_MORE", 0)
_GONE = select.POLLERR | select.POLLHUP | select.POLLNVAL


def available() -> bool:
    """Whether this platform has ``splice(2)`` (Linux) and the calls used with it."""
    return all(hasattr(os, name) for name in ("splice", "eventfd", "pipe2")) and hasattr(
        fcntl, "F_SETPIPE_SZ"
    )


class SpliceStopped(Exception):
    """The transfer was stopped from outside (cancelled, or the gateway shuts down)."""


class SpliceStalled(TimeoutError):
    """No byte moved for ``stall_timeout`` seconds.

    Args:
        message: What stalled.
        seconds: The stall timeout.
        destination: Whether bytes were waiting for the destination socket (it took
            nothing), rather than for the source to send some.
    """

    def __init__(self, message: str, *, seconds: float, destination: bool) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.destination = destination


class PeerLost(ConnectionError):
    """One end of a spliced transfer ended, failed or hung up before the whole body moved."""

    #: Who that end is, in messages.
    peer = "a peer"


class UpstreamClosed(PeerLost):
    """The upstream connection ended or failed before the whole body had moved."""

    peer = "the upstream"


class ClientGone(PeerLost):
    """The client's connection ended, failed or hung up before the whole body had moved."""

    peer = "the client"


@dataclass
class Progress:
    """Bytes moved so far; written by the worker thread, read after it ends."""

    received: int = 0
    sent: int = 0


def splice_loop(
    src: int, dst: int, length: int, *, wake: int | None = None,
    stall_timeout: float = 60.0, progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic, src_peer: type[PeerLost] = UpstreamClosed,
    dst_peer: type[PeerLost] = ClientGone,
) -> int:
    """Move exactly ``length`` bytes from socket ``src`` to socket ``dst`` in the kernel.

    Both sockets must be non-blocking. Blocks the calling thread (run it in a worker).
    The defaults name the ends of a download; an upload's source is the client.

    Args:
        src: The readable socket's descriptor.
        dst: The writable socket's descriptor.
        length: Bytes to move; ``src`` may hold more, which is left unread.
        wake: A descriptor that becomes readable to stop the loop (an ``eventfd``).
        stall_timeout: Seconds without any progress before giving up.
        progress: Updated as bytes move.
        clock: Monotonic seconds.
        src_peer: Who ``src`` is: raised when it ends or fails (a reset) early.
        dst_peer: Who ``dst`` is: raised when it hangs up.

    Returns:
        ``length``.

    Raises:
        SpliceStopped: ``wake`` became readable.
        SpliceStalled: Nothing moved for ``stall_timeout`` seconds.
        PeerLost: ``src`` reached its end or failed before ``length`` bytes
            (``src_peer``), or ``dst`` hung up (``dst_peer``).
        OSError: ``splice(2)`` failed to write to ``dst`` (``EPIPE``, ``ECONNRESET``, ...).
    """
    done = progress or Progress()
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with suppress(OSError):  # a smaller pipe still works, in more turns
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        capacity = fcntl.fcntl(pipe_w, fcntl.F_GETPIPE_SZ)
        poller, woken = select.poll(), select.poll()
        if wake is not None:
            poller.register(wake, select.POLLIN)
            woken.register(wake, select.POLLIN)
        last_move = clock()
        moved = False
        while done.sent < length:
            if moved:
                last_move = clock()
                if woken.poll(0):  # a busy transfer never waits below: look here
                    raise SpliceStopped(f"stopped after {done.sent} of {length} bytes")
            moved = False
            queued = done.received - done.sent
            if queued:
                more = _MORE if done.received < length else 0
                count = _splice(pipe_r, dst, queued, _FLAGS | more)
                if count > 0:
                    done.sent += count
                    moved = True
                    continue
            if done.received < length and queued < capacity:
                try:
                    count = _splice(src, pipe_w, min(capacity - queued, length - done.received),
                                    _FLAGS)
                except OSError as exc:  # a reset: the source broke off, as at its end
                    raise src_peer(
                        f"{src_peer.peer} failed after {done.received} of {length} bytes: {exc}"
                    ) from exc
                if count == 0:
                    raise src_peer(
                        f"{src_peer.peer} closed after {done.received} of {length} bytes"
                    )
                if count > 0:
                    done.received += count
                    moved = True
                    continue
            # Nothing moved: wait. With bytes in the pipe only the client matters (the
            # pipe may be full by its slots, with fewer bytes than its capacity).
            if done.received > done.sent:
                poller.register(dst, select.POLLOUT)
                with suppress(KeyError):
                    poller.unregister(src)
            else:
                poller.register(dst, 0)  # still reports a hang-up or an error
                poller.register(src, select.POLLIN)
            left = last_move + stall_timeout - clock()
            if left <= 0:
                raise SpliceStalled(
                    f"no progress for {stall_timeout:g} s ({done.sent} of {length} bytes)",
                    seconds=stall_timeout, destination=done.received > done.sent,
                )
            for fd, events in poller.poll(max(1, int(left * 1000))):
                if fd == wake:
                    raise SpliceStopped(f"stopped after {done.sent} of {length} bytes")
                if fd == dst and events & _GONE and not events & select.POLLOUT:
                    raise dst_peer(
                        f"{dst_peer.peer} hung up after {done.sent} of {length} bytes")
                if fd == src and events & select.POLLNVAL:
                    raise src_peer(f"{src_peer.peer}'s descriptor is not open")
        return length
    finally:
        os.close(pipe_r)
        os.close(pipe_w)


def _splice(src: int, dst: int, count: int, flags: int) -> int:
    """One ``splice(2)``: bytes moved, 0 at the end of ``src``, -1 when it would block."""
    try:
        return os.splice(src, dst, count, flags=flags)
    except BlockingIOError:
        return -1
    except InterruptedError:
        return -1
