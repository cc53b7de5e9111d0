"""Unit tests of the changes core that mutation testing found missing: each fails with a
one-line change the rest of the suite let pass (parser, backoff, handler calls, retry
policy, replay memory). Pure logic, fake clock, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, globalLogPublisher

from gateway.couch.changes.backoff import Backoff
from gateway.couch.changes.parser import ChangeRow, ChangesParser
from gateway.errors import FeedProtocolError
from tests.test_changes_parser import make_feed, row

# -- parser ---------------------------------------------------------------------------


def test_a_partial_line_exactly_at_the_limit_is_held_not_refused() -> None:
    """A line of exactly ``max_line_bytes`` is accepted however it is split: the
    bytes held back before its newline may reach the limit (a surviving mutant: ``>=``)."""
    line = b'{"seq":1,"id":"a","changes":[]}'
    parser = ChangesParser(max_line_bytes=len(line))
    assert parser.feed(line) == []  # the whole line, its newline not yet here
    assert parser.pending_bytes == len(line)
    assert parser.feed(b"\n") == [ChangeRow({"seq": 1, "id": "a", "changes": []})]


@pytest.mark.parametrize(
    "line",
    [b'{"seq":1}', b'{"seq":1,"changes":[]}', b'{"id":"a","changes":[]}', b'{"id":"a"}'],
)
def test_a_row_missing_its_id_or_seq_is_a_protocol_error(line: bytes) -> None:
    """A change row needs both ``id`` and ``seq``; half a row is a FeedProtocolError
    (the feed's fatal, logged path), never a KeyError out of ``dataReceived`` nor a
    row without a seq handed on (a surviving mutant: ``and`` -> ``or``)."""
    with pytest.raises(FeedProtocolError):
        ChangesParser().feed(line + b"\n")


def test_reset_forgets_a_partial_line() -> None:
    """``reset()`` (documented: for a new connection) drops the partial line, so the
    next connection's first line is not glued to the last one's tail."""
    parser = ChangesParser()
    parser.feed(b'{"seq":1,"id":"a","cha')  # the connection is lost here
    parser.reset()
    assert parser.pending_bytes == 0
    assert parser.feed(b'{"seq":2,"id":"b","changes":[]}\n') == [
        ChangeRow({"seq": 2, "id": "b", "changes": []})
    ]


# -- backoff --------------------------------------------------------------------------


def test_backoff_after_very_many_attempts_stays_at_the_cap() -> None:
    """A long outage (about 1,100 attempts: ~9 h at the 30 s cap) must not overflow
    ``factor ** attempts`` (``OverflowError`` would crash the feed's loop for good)."""
    backoff = Backoff(initial=0.5, factor=2.0, cap=30.0, random=lambda: 0.999)
    delays = [backoff.next_delay() for _ in range(1100)]
    assert max(delays) <= 30.0 and delays[-1] > 29.0


# -- handlers -------------------------------------------------------------------------


def test_a_coroutine_changes_handler_runs_and_pauses_the_feed() -> None:
    """``on_changes`` may be a coroutine function (documented in feed.py and
    handlers.py): its body runs, and the stream waits until it is done."""
    gate: Deferred[None] = Deferred()
    seen: list[str] = []

    async def handler(rows: list[dict[str, Any]], last_seq: Any) -> None:
        await gate
        seen.extend(r["id"] for r in rows)

    feed, couch, _clock, _rec = make_feed(since=0, on_changes=handler)
    feed.startService()
    response = couch.responses[0]
    response.send(row(1, "a"))
    assert response.transport.paused, "the feed must wait for the coroutine"
    gate.callback(None)
    assert seen == ["a"] and not response.transport.paused
    feed.stopService()


def test_an_asynchronous_handler_failure_is_logged() -> None:
    """A handler whose Deferred fails is logged ("changes handler of db failed") and
    the feed goes on; the failure must not vanish silently."""
    failures: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") is LogLevel.critical and "log_failure" in event:
            failures.append(event)

    pending: list[Deferred[None]] = []

    def handler(rows: list[dict[str, Any]], last_seq: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    globalLogPublisher.addObserver(observer)
    try:
        feed, couch, _clock, _rec = make_feed(since=0, on_changes=handler)
        feed.startService()
        response = couch.responses[0]
        response.send(row(1, "a"))
        pending[0].errback(RuntimeError("consumer bug"))
        response.send(row(2, "b"))
        assert len(pending) == 2 and feed.state == "live"
        feed.stopService()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any("consumer bug" in str(e["log_failure"].value) for e in failures), failures


# -- retry policy ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_a_shared_feed_retries_through_busy_and_failing_answers(status: int) -> None:
    """feed.py's policy: a 4xx other than 408/429 is fatal; 408, 429 (CouchDB or a proxy
    in front of it shedding load) and every 5xx are retried. A fatal 429 would end every
    subscription of a shared feed because CouchDB was busy for a moment."""
    from gateway.errors import CouchError

    feed, couch, clock, rec = make_feed(since=0)
    couch.outcomes = [CouchError.from_response(status, {"error": "busy", "reason": "later"})]
    feed.startService()
    assert rec.errors == [] and feed.state == "interrupted"
    clock.advance(1)  # the first backoff delay
    assert len(couch.requests) == 2 and feed.state == "live"
    couch.responses[0].send(row(1, "a"))
    assert rec.ids == ["a"]
    feed.stopService()


# -- replay de-duplication memory -------------------------------------------------------


def _state(doc_id: str, rev: str) -> dict[str, Any]:
    return {"seq": 1, "id": doc_id, "changes": [{"rev": rev}]}


def test_the_replay_memory_forgets_the_least_recently_changed_document() -> None:
    """The bounded memory behind replay de-duplication is an LRU: when full, the
    document changed longest ago goes, not the newest one (which a replay after a
    reconnect is most likely to repeat), and a document changed again is recent again."""
    from gateway.couch.changes.feed import _RecentRevisions

    recent = _RecentRevisions(max_ids=2)
    assert not recent.is_repeat(_state("a", "1-a"))
    assert not recent.is_repeat(_state("b", "1-b"))
    assert not recent.is_repeat(_state("a", "2-a"))  # "a" is the most recent now
    assert not recent.is_repeat(_state("c", "1-c"))  # full: "b" (oldest) goes
    assert recent.is_repeat(_state("c", "1-c")), "the newest document was forgotten"
    assert recent.is_repeat(_state("a", "2-a")), "a document changed again was forgotten"
    assert not recent.is_repeat(_state("b", "1-b"))  # it was the one evicted
