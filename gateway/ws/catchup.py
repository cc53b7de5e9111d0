"""Resume: joining a one-shot catch-up with the shared live feed, without gap or duplicate.

A subscriber with ``since`` is registered on the shared feed *first* (its live
deliveries are buffered), then reads ``_changes?since=`` as its own user, page by page,
until the end. Every change committed up to the end of the catch-up is in the
catch-up; every change after it reaches the buffer (the shared feed started from a
seq taken before the catch-up began). The buffer is then merged, dropping what the
catch-up already sent, by ``(doc id, rev)``: the join remembers the last revision it
sent of each document, and a buffered row of that revision is dropped. A row of a
strictly higher generation is a newer edit and goes out (seqs are never compared: they
are opaque).

Any other row of a document already sent is either stale (a lagging feed's earlier
state: a lower generation, or a conflicting branch of the same generation that won
before and lost since) or a real change (the winner deleted while an older branch lives
on, or a conflicting branch replicated in that wins now). Only CouchDB can tell: the
server asks for the document's current revision and delivers the row only if it is
that row's (:class:`Verdict`), holding the rows after it meanwhile so that order is kept.

One race is left to the generation rule: a stale row of a *higher* generation than was
sent, which needs a winner deleted in favour of an older conflicting branch while a
subscriber resumes, goes out behind the current revision.

The shared feed may still be *behind* the end of the catch-up when the merge happens
(the catch-up read changes the feed has not delivered yet), so the same filter stays on
for the live changes that follow. CouchDB orders a feed per document, not across
documents (a sharded database interleaves its shards' rows), so the filter is lifted
per document: a document's first live change that is new shows the feed is past what
the catch-up sent of it. The filter as a whole goes when no document is left in it, or
:data:`TRAILING_SECONDS` after the merge, so documents the live feed never brings again
do not keep it (and its memory) for the subscription's life.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from gateway.couch.transport import CouchTransport
from gateway.couch.urls import changes_query
from gateway.ws.hub import PreparedChange
from gateway.ws.protocol import FeedParams, Seq

__all__ = [
    "PAGE_SIZE", "TRAILING_SECONDS", "Join", "PageSizer", "Verdict", "fetch_changes",
    "rev_generation",
]

PAGE_SIZE = 500

#: Seconds after the merge that live changes are still checked against the catch-up:
#: far more than a live shared feed lags behind a one-shot read of the same database.
TRAILING_SECONDS = 30.0


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
    heartbeat_ms: int | None = None,
) -> tuple[list[dict[str, Any]], Seq, bool]:
    """Read one page of a normal ``_changes`` feed as the transport's identity.

    With ``heartbeat_ms`` CouchDB sends a blank line whenever it has had nothing to
    send for that long (a filter scanning many documents for few matches), and each
    line keeps the request's timeout from running out while the scan goes on.

    Returns:
        ``(rows, next_since, more)``: ``more`` is true when the page was full, and
        ``next_since`` is where the next page starts. After a full page that is the last
        row's seq, not ``last_seq``: a clustered CouchDB that stops at ``limit`` still
        moves ``last_seq`` past rows its filter weighed on other shards, and past rows
        it read but did not send (fabric_view_changes), so resuming there could skip
        changes. A row's seq holds every shard's position at that row.

    Raises:
        CouchError: CouchDB refused (e.g. the user may not read the database).
    """
    query = dict(changes_query(params.changes_params()), since=since, limit=page_size)
    if heartbeat_ms is not None:
        query["heartbeat"] = heartbeat_ms
    body = params.changes_body()
    if body is not None:
        answer = await transport.request("POST", [db, "_changes"], params=query, json=body)
    else:
        answer = await transport.request("GET", [db, "_changes"], params=query)
    rows: list[dict[str, Any]] = list(answer.get("results") or [])
    more = len(rows) >= page_size
    next_since: Seq = answer.get("last_seq", since)
    if more and rows[-1].get("seq") is not None:
        next_since = rows[-1]["seq"]
    return rows, next_since, more


class PageSizer:
    """How many rows a catch-up asks for next, so that a page holds about ``target`` bytes.

    A page is read, parsed and encoded whole before the connection's send-queue budget
    can act on it: 500 rows of large documents made one slow subscriber cost the gateway
    hundreds of MiB. The first page with documents is small; each next one is sized by
    the rows seen so far.

    Args:
        target: Bytes of encoded changes wanted per page.
        first: Rows of the first page.
        most: Rows of any page at most.
    """

    def __init__(self, target: int, first: int, most: int = PAGE_SIZE) -> None:
        self.target = target
        self.most = most
        #: Rows to ask for next.
        self.size = max(1, min(first, most))

    def record(self, rows: int, size: int) -> None:
        """A page brought ``rows`` rows, ``size`` bytes once encoded."""
        if rows:
            per_row = max(1, size // rows)
            self.size = max(1, min(self.most, self.target // per_row))


class Verdict(enum.Enum):
    """What a live change is, against what the catch-up sent of its document."""

    #: Nothing sent of it, or a newer edit (a higher generation).
    NEW = "new"
    #: This revision was the last sent.
    SENT = "sent"
    #: Another revision, not of a higher generation: a stale row of a lagging feed, or a
    #: real change (an older branch, or a conflicting one, that won); only the
    #: document's current revision can tell them apart.
    CHECK = "check"


@dataclass
class Join:
    """The state of one subscription between its catch-up and the live feed.

    Attributes:
        buffer: Live changes received while catching up (or while one is checked).
        buffer_bytes: Their serialised size.
        sent: Per document id, the last revision sent during the join.
        merged: False while the catch-up runs: a new change is remembered like the
            catch-up's; afterwards the first new change of a document lifts the filter
            for that document.
        until: After the merge, the clock time the trailing filter ends.
    """

    buffer: list[PreparedChange] = field(default_factory=list)
    buffer_bytes: int = 0
    sent: dict[str, str] = field(default_factory=dict)
    merged: bool = False
    until: float = 0.0

    def buffer_live(self, change: PreparedChange) -> None:
        """Keep a live change until the catch-up (or a check) is done."""
        self.buffer.append(change)
        self.buffer_bytes += change.size

    def record(self, doc_id: str, rev: str) -> None:
        """Note that ``rev`` of ``doc_id`` was sent (a feed sends a document's states in order)."""
        self.sent[doc_id] = rev

    def verdict(self, doc_id: str, rev: str) -> Verdict:
        """Classify a change against what was sent (see :class:`Verdict`)."""
        last = self.sent.get(doc_id)
        if last is None:
            return Verdict.NEW
        if rev == last:
            return Verdict.SENT
        if rev_generation(rev) > rev_generation(last):
            return Verdict.NEW
        return Verdict.CHECK

    def take(self, change: PreparedChange) -> Verdict:
        """Classify a live change and note a new one (see the module docs).

        Before the merge a new change is remembered as sent; after it, a document's
        first new change ends the filter for that document. A change to check is noted
        only once CouchDB confirmed it (:meth:`passed`).
        """
        verdict = self.verdict(change.doc_id, change.rev)
        if verdict is Verdict.NEW:
            self.passed(change.doc_id, change.rev)
        return verdict

    def passed(self, doc_id: str, rev: str) -> None:
        """Note a change that goes out: its revision is the last sent of its document."""
        if self.merged:
            self.sent.pop(doc_id, None)
        else:
            self.record(doc_id, rev)

    def keep_filtering(self, now: float) -> None:
        """Check live changes for :data:`TRAILING_SECONDS` from ``now``.

        Called after the merge, and again when an interrupted shared feed is back.
        """
        self.until = now + TRAILING_SECONDS

    def trailing(self, now: float) -> bool:
        """Whether live changes still need :meth:`take` at clock time ``now``."""
        return bool(self.sent) and now < self.until


def row_rev(row: dict[str, Any]) -> str:
    """The (winning) revision of a ``_changes`` row."""
    changes = row.get("changes") or [{}]
    return str(changes[0].get("rev", ""))

