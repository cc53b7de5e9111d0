"""The send queue of one WebSocket connection: bookkeeping only, no I/O.

A connection writes a message at once while its socket takes writes; otherwise the
message waits here until the socket drains (``resumeProducing``). A change waiting for
a slow client is replaced by a later change to the same document of the same
subscription (coalescing): the client gets the latest revision once, and the queue of
a client that stops reading grows with the number of documents changed, not the number
of changes. The connection closes a client whose queue outgrows its budget.

A run of changes written while the socket takes writes goes out in few sends: their
frames joined, up to ``JOINED_WRITE_BYTES`` a send (:func:`joined_runs`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.ws.protocol import Seq

__all__ = ["JOINED_WRITE_BYTES", "Outbox", "Outgoing", "joined_runs"]

#: The most bytes of frames joined into one send when a run of changes is written.
JOINED_WRITE_BYTES = 64 * 1024


def joined_runs(frames: Sequence[bytes]) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive runs of ``frames`` to join into one send each.

    A run takes frames until it holds ``JOINED_WRITE_BYTES`` or more (one frame at least).

    Args:
        frames: The frames of a run of changes, in the order they are to be sent.

    Yields:
        The bounds of each run, in order; together they cover ``frames``.
    """
    start = 0
    while start < len(frames):
        end, size = start, 0
        while end < len(frames) and size < JOINED_WRITE_BYTES:
            size += len(frames[end])
            end += 1
        yield start, end
        start = end


@dataclass(eq=False)
class Outgoing:
    """One message for the client.

    Attributes:
        message: Autobahn's prepared message (its frame already built).
        size: The payload's length in bytes, counted against the queue's budget.
        sub: The subscription it belongs to (``None``: a connection-level message).
        seq: The seq of the change it carries: its subscription resumes after it once
            it is written.
        received: When the change was read from CouchDB (reactor seconds), for the
            delivery lag metric.
    """

    message: Any
    size: int
    sub: Any = None
    seq: Seq | None = None
    received: float | None = None


class Outbox:
    """Messages waiting for a connection's socket, oldest first."""

    def __init__(self) -> None:
        self._items: OrderedDict[Hashable, Outgoing] = OrderedDict()
        self._ids = 0
        #: Payload bytes waiting, the figure checked against the connection's budget.
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing, coalesce: Hashable | None = None) -> bool:
        """Queue ``item`` last.

        Args:
            item: The message.
            coalesce: A key (subscription and document) under which a later message
                replaces this one if it is still waiting; ``None``: never replaced.

        Returns:
            Whether a waiting message was replaced (it will not be sent).
        """
        replaced = False
        if coalesce is None:
            self._ids += 1
            key: Hashable = ("m", self._ids)
        else:
            previous = self._items.pop(coalesce, None)
            if previous is not None:
                self.bytes -= previous.size
                replaced = True
            key = coalesce
        self._items[key] = item
        self.bytes += item.size
        return replaced

    def pop(self) -> Outgoing:
        """Take the oldest waiting message out (``KeyError`` when none waits)."""
        _key, item = self._items.popitem(last=False)
        self.bytes -= item.size
        return item

    def forget(self, sub: Any) -> None:
        """Drop every message waiting for the subscription ``sub``."""
        for key in [key for key, item in self._items.items() if item.sub is sub]:
            self.bytes -= self._items.pop(key).size

    def clear(self) -> None:
        """Drop everything waiting."""
        self._items.clear()
        self.bytes = 0
