"""Resume: joining a one-shot catch-up with the shared live feed, without gap or duplicate.

A subscriber with ``since`` is registered on the shared feed *first* (its live
deliveries are buffered), then reads ``_changes?since=`` as its own user, page by page,
until the end. Every change committed up to the end of the catch-up is in the
catch-up; every change after it reaches the buffer (the shared feed started from a
seq taken before the catch-up began). The buffer is then merged, dropping what the
catch-up already sent, by ``(doc id, rev)``: a buffered row is dropped when the
catch-up (or an earlier buffered row) sent the same revision or one of a strictly higher
generation of the same document (revision generations are compared; seqs never are:
they are opaque). Two different revisions of the same generation are conflicting
edits: both are real changes and neither is dropped.

The shared feed may still be *behind* the end of the catch-up when the merge happens
(the catch-up read changes the feed has not delivered yet), so the same filter stays on
for the live changes that follow, until the first one that is not a duplicate: the feed
delivers in seq order, so from there on it is past everything the catch-up sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.couch.transport import CouchTransport
from gateway.ws.hub import PreparedChange
from gateway.ws.protocol import FeedParams, Seq

__all__ = ["Join", "fetch_changes", "rev_generation"]

PAGE_SIZE = 500


def rev_generation(rev: str) -> int:
    """The generation number of a revision (``"3-abc"`` → 3; 0 when unparsable)."""
    head = rev.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


async def fetch_changes(
    transport: CouchTransport,
    db: str,
    params: FeedParams,
    since: Seq,
    page_size: int = PAGE_SIZE,
) -> tuple[list[dict[str, Any]], Seq, bool]:
    """Read one page of a normal ``_changes`` feed as the transport's identity.

    Returns:
        ``(rows, last_seq, more)``: ``more`` is true when the page was full.

    Raises:
        CouchError: CouchDB refused (e.g. the user may not read the database).
    """
    query = dict(params.changes_params(), since=since, limit=page_size)
    body = params.changes_body()
    if body is not None:
        answer = await transport.request("POST", [db, "_changes"], params=query, json=body)
    else:
        answer = await transport.request("GET", [db, "_changes"], params=query)
    rows: list[dict[str, Any]] = list(answer.get("results") or [])
    last_seq: Seq = answer.get("last_seq", since)
    return rows, last_seq, len(rows) >= page_size


@dataclass
class Join:
    """The state of one subscription between its catch-up and the live feed.

    Attributes:
        buffer: Live changes received while catching up.
        buffer_bytes: Their serialised size.
        sent: Per document id, the revisions of the highest generation sent during the
            join (several when conflicting edits were sent).
    """

    buffer: list[PreparedChange] = field(default_factory=list)
    buffer_bytes: int = 0
    sent: dict[str, set[str]] = field(default_factory=dict)

    def buffer_live(self, change: PreparedChange) -> None:
        """Keep a live change until the catch-up is done."""
        self.buffer.append(change)
        self.buffer_bytes += change.size

    def record(self, doc_id: str, rev: str) -> None:
        """Note that ``rev`` of ``doc_id`` was sent."""
        revs = self.sent.get(doc_id)
        if not revs:
            self.sent[doc_id] = {rev}
            return
        generation, top = rev_generation(rev), rev_generation(next(iter(revs)))
        if generation > top:
            self.sent[doc_id] = {rev}
        elif generation == top:
            revs.add(rev)

    def is_duplicate(self, doc_id: str, rev: str) -> bool:
        """Whether a change adds nothing to what was sent.

        It does when this revision was sent, or when a revision of a strictly higher
        generation was (this one is an older edit). A different revision of the same generation is a
        conflicting edit, hence a real change.
        """
        revs = self.sent.get(doc_id)
        if not revs:
            return False
        return rev in revs or rev_generation(rev) < rev_generation(next(iter(revs)))

    def merge(self) -> Iterator[PreparedChange]:
        """The buffered live changes that are new, in order (empties the buffer)."""
        buffer, self.buffer, self.buffer_bytes = self.buffer, [], 0
        for change in buffer:
            if self.is_duplicate(change.doc_id, change.rev):
                continue
            self.record(change.doc_id, change.rev)
            yield change

    def admit(self, change: PreparedChange) -> bool:
        """After :meth:`merge`: whether a live change is new (see the module docs).

        Duplicates of what was sent are refused until the first new change, after which
        the filter is off for good (its memory is released) and this returns ``True``.
        """
        if self.sent and self.is_duplicate(change.doc_id, change.rev):
            return False
        self.sent.clear()
        return True


def row_rev(row: dict[str, Any]) -> str:
    """The (winning) revision of a ``_changes`` row."""
    changes = row.get("changes") or [{}]
    return str(changes[0].get("rev", ""))

