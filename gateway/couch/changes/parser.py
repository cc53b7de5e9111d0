"""A sans-IO parser of CouchDB's continuous ``_changes`` feed.

``GET /db/_changes?feed=continuous`` answers with one JSON object per line::

    {"seq": "12-g1AAAA...", "id": "doc", "changes": [{"rev": "1-abc"}]}
    <blank line: a heartbeat>
    {"last_seq": "12-g1AAAA...", "pending": 0}        (only when the feed ends)

:class:`ChangesParser` turns bytes, split anywhere (mid-line, mid-UTF-8 character), into
:class:`ChangeRow`, :class:`Heartbeat`, :class:`FeedEnd` and :class:`FeedErrorLine`
events. It does no I/O, so it is tested without sockets. Memory is bounded: a line
longer than ``max_line_bytes`` raises :class:`~gateway.errors.FeedProtocolError` before
more is buffered, as does a line that is not a JSON object of a known shape.

Sequence values are opaque JSON (strings in CouchDB 3, integers elsewhere): the parser
passes them on untouched and never compares them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from gateway import deep_json
from gateway.deep_json import NestedTooDeep
from gateway.errors import FeedProtocolError

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "ChangeRow",
    "ChangesParser",
    "FeedEnd",
    "FeedErrorLine",
    "FeedEvent",
    "Heartbeat",
]

#: Default limit of one feed line: CouchDB 3's default ``max_document_size`` (8 MB)
#: twice over, for ``include_docs`` rows with JSON escaping.
DEFAULT_MAX_LINE_BYTES: Final = 16 * 1024 * 1024

_WHITESPACE: Final = b" \t\r\n"


@dataclass(frozen=True)
class ChangeRow:
    """One change row.

    Attributes:
        row: CouchDB's object (``seq``, ``id``, ``changes``, maybe ``deleted`` and
            ``doc``), exactly as sent.
    """

    row: dict[str, Any]

    @property
    def seq(self) -> Any:
        """The row's opaque sequence value."""
        return self.row["seq"]


@dataclass(frozen=True)
class Heartbeat:
    """A blank line: the server is alive and has nothing to say."""


@dataclass(frozen=True)
class FeedEnd:
    """The final ``{"last_seq": ...}`` line: the server ends the feed."""

    last_seq: Any
    pending: Any = None


@dataclass(frozen=True)
class FeedErrorLine:
    """An ``{"error": ..., "reason": ...}`` line: the server aborts the feed."""

    error: str
    reason: str


FeedEvent = ChangeRow | Heartbeat | FeedEnd | FeedErrorLine


class ChangesParser:
    """Incremental parser of a continuous feed.

    Args:
        max_line_bytes: The longest line accepted (without its newline).

    Example::

        parser = ChangesParser()
        for event in parser.feed(chunk):
            ...
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self.ended = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete line held back (never more than the line limit)."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial line (for a new connection)."""
        self._buffer.clear()
        self.ended = False

    def feed(self, data: bytes) -> list[FeedEvent]:
        """Parse more bytes.

        Args:
            data: The next bytes of the response body, split anywhere.

        Returns:
            The events of every line completed by ``data``, in order.

        Raises:
            FeedProtocolError: A line is too long, is not UTF-8 JSON, or is not an
                object of a known shape. The parser is unusable afterwards until
                :meth:`reset`.
        """
        events: list[FeedEvent] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if len(self._buffer) + (newline - start) > self.max_line_bytes:
                self._too_long()
            self._buffer += data[start:newline]
            start = newline + 1
            line = bytes(self._buffer)
            self._buffer.clear()
            events.append(self._parse_line(line))
        if len(self._buffer) + (len(data) - start) > self.max_line_bytes:
            self._too_long()
        self._buffer += data[start:]
        return events

    def _too_long(self) -> None:
        self._buffer.clear()
        raise FeedProtocolError(
            f"a _changes feed line exceeds the limit of {self.max_line_bytes} bytes"
        )

    def _parse_line(self, line: bytes) -> FeedEvent:
        line = line.strip(_WHITESPACE)
        if not line:
            return Heartbeat()
        try:
            value = deep_json.loads(line.decode("utf-8"))
        except NestedTooDeep as exc:
            raise FeedProtocolError(f"a _changes feed row is {exc}") from None
        except (UnicodeDecodeError, ValueError):
            raise FeedProtocolError(
                f"a _changes feed line is not valid JSON ({len(line)} bytes)"
            ) from None
        if not isinstance(value, dict):
            raise FeedProtocolError("a _changes feed line is not a JSON object")
        if "id" in value and "seq" in value:
            if not isinstance(value["id"], str) or not isinstance(value.get("changes"), list):
                raise FeedProtocolError("a _changes feed row lacks a string id or changes list")
            return ChangeRow(value)
        if "last_seq" in value:
            self.ended = True
            return FeedEnd(value["last_seq"], value.get("pending"))
        if "error" in value:
            return FeedErrorLine(str(value["error"]), str(value.get("reason", "")))
        raise FeedProtocolError("a _changes feed line is neither a change nor its end")
