"""Writing to a TCP transport at once when nothing is waiting to be sent.

Twisted's ``transport.write`` always buffers: it appends to the transport's queue and
registers the socket for writability, and the reactor's next turn sends the bytes and
unregisters it. That is two ``epoll_ctl`` calls, one readiness event and a pass through
``doWrite`` per write. For one small frame written to thousands of sockets (a change
fanned out to every subscriber) that bookkeeping costs more than the ``send`` itself,
and every socket waits for the end of the whole loop before its first byte leaves.

:func:`write_now` does what asyncio's transports do: when the transport has nothing
queued it calls ``send`` on the socket directly and hands Twisted only what the kernel
did not take (none, unless the peer is slow). Ordering is kept because the direct path
is taken only when Twisted's queue is empty; any other transport (TLS, a test double, a
closing or closed one) gets a plain ``transport.write``. :func:`flush_now` sends what
a transport already holds, at once. :func:`send_each` is the send phase of a broadcast:
one frame, many sockets picked with :func:`idle_socket`, one tight loop.
"""

from __future__ import annotations

import fcntl
import socket
import sys
import termios
from collections.abc import Sequence
from typing import Any

from twisted.internet import tcp

__all__ = [
    "flush_now", "idle_socket", "nothing_queued", "queued_bytes", "send_each", "send_range",
    "write_now",
]


def nothing_queued(transport: Any) -> bool:
    """Whether a TCP transport has no bytes waiting in Twisted's send queue."""
    return not transport._tempDataLen and transport.offset == len(transport.dataBuffer)


def queued_bytes(transport: Any) -> int | None:
    """Bytes of a TCP transport not yet taken by its peer (``None``: not a TCP transport).

    Those in Twisted's send queue, plus those in the kernel's send queue (``SIOCOUTQ``:
    not yet acknowledged, which on a full connection means not yet read by the peer).
    The kernel's queue can hold megabytes, and Twisted's shrinks only when a third of it
    is free again, so a peer reading slowly shows in the kernel's count first.
    """
    if not isinstance(transport, tcp.Connection):
        return None
    queued = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    if _OUTQ is None:
        return queued
    try:
        kernel = fcntl.ioctl(transport.socket.fileno(), _OUTQ, _INT)
    except (OSError, ValueError):  # closed, or not a socket the call knows
        return queued
    return queued + int.from_bytes(kernel, sys.byteorder, signed=True)


_INT = bytes(4)
#: ``SIOCOUTQ`` on Linux (the same number); absent elsewhere.
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)


def idle_socket(transport: Any) -> socket.socket | None:
    """The socket of a TCP transport that may be written to directly now, else ``None``.

    That is an open TCP transport, not closing, with nothing in Twisted's send queue: a
    ``send`` on its socket keeps the order of everything written before. Any other
    transport (TLS, a test double, a closing or closed one) gives ``None``.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and nothing_queued(transport)
    ):
        sock: socket.socket = transport.socket
        return sock
    return None


def write_now(transport: Any, data: bytes) -> None:
    """Send ``data`` on ``transport`` now if possible, else queue it as ``write`` does.

    Args:
        transport: The connection's transport (any ``ITransport``).
        data: The bytes to send.
    """
    sock = idle_socket(transport)
    if sock is not None:
        try:
            sent = sock.send(data)
        except OSError:
            # EAGAIN, EINTR or a dead peer: Twisted's own write path retries or
            # notices the loss on its next doWrite, exactly as if we had not tried.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def send_each(sockets: Sequence[socket.socket], data: bytes) -> list[int]:
    """Send ``data`` once on each socket, in one tight loop; how much each one took.

    The send phase of a broadcast: the caller picks the sockets (see
    :func:`idle_socket`) before and settles the results after, so that the last
    subscriber's frame leaves as early as the kernel allows. A socket that takes only
    part of ``data`` (its buffer is full) or fails (EAGAIN, EINTR, a dead peer) gives
    what it took, possibly 0; the caller hands the rest to the transport's ``write``,
    whose own ``doWrite`` retries it or notices the loss, exactly as if we had not
    tried.

    Args:
        sockets: Non-blocking sockets that may be written to now.
        data: The bytes for every one of them.
    """
    sent = [0] * len(sockets)
    send_range(sockets, data, sent, 0, len(sockets))
    return sent


def send_range(
    sockets: Sequence[socket.socket], data: bytes, sent: list[int], start: int, stop: int,
) -> None:
    """:func:`send_each` over ``sockets[start:stop]``, into ``sent[start:stop]``.

    Each entry is set once its ``send`` has returned, so a loop that ends early (an
    unexpected error) leaves 0 for exactly the sockets it did not write to.
    """
    for index in range(start, stop):
        try:
            sent[index] = sockets[index].send(data)
        except OSError:
            sent[index] = 0


def flush_now(transport: Any) -> None:
    """Send what a TCP transport has queued now instead of on the reactor's next turn.

    For a response whose bytes are all written: they leave before the bookkeeping that
    follows (access log, metrics, callbacks) instead of after it. A transport that is
    closing, or not a plain TCP one, is left to the reactor; so is anything the kernel
    does not take now (and an error, which the reactor's own ``doWrite`` then reports).
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not nothing_queued(transport)
    ):
        transport.doWrite()  # type: ignore[no-untyped-call]
