"""Unit tests of the WebSocket protocol, outbox, catch-up paging and fan-out limits that
mutation testing found missing: each fails with a one-line change of
gateway/ws/{protocol,outbox,catchup,hub}.py that every other test let pass (each test
names the change it catches).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock

from gateway.ws.catchup import PAGE_SIZE, PageSizer, fetch_changes
from gateway.ws.hub import ChangeBatch, FeedHub, PreparedChange, SharedFeed
from gateway.ws.outbox import JOINED_WRITE_BYTES, joined_runs
from gateway.ws.protocol import FeedParams, ProtocolError, Subscribe, _nesting, parse_client_message

# -- protocol.py -----------------------------------------------------------------------

def test_a_message_one_level_past_the_nesting_limit_is_refused() -> None:
    """Kills ``_nesting(data) > MAX_NESTING`` → ``> MAX_NESTING + 1`` (the existing test
    checks 64 and 66 levels, never 65)."""
    selector: Any = {"a": [1]}  # 2 levels
    for _ in range(31):
        selector = {"$and": [selector]}  # 2 levels each
    message = {"type": "subscribe", "id": "deep", "db": "d", "filter": "_selector",
               "selector": selector}
    assert _nesting(message) == 65
    with pytest.raises(ProtocolError) as info:
        parse_client_message(json.dumps(message))
    assert "nested more than 64 levels" in info.value.reason


def test_a_subscribe_without_include_docs_does_not_include_documents() -> None:
    """Kills ``data.get("include_docs", False)`` → ``True`` (docs/websocket.md: the
    default is false; a document body would go to every subscriber that did not ask)."""
    message = parse_client_message(json.dumps({"type": "subscribe", "id": "a", "db": "d"}))
    assert isinstance(message, Subscribe)
    assert message.params.include_docs is False
    assert "include_docs" not in message.params.changes_params()


def test_since_now_is_not_a_catch_up() -> None:
    """Kills ``Subscribe.catch_up`` without ``self.since != "now"``."""
    message = parse_client_message(json.dumps(
        {"type": "subscribe", "id": "a", "db": "d", "since": "now"}))
    assert isinstance(message, Subscribe)
    assert message.catch_up is False
    resumed = parse_client_message(json.dumps(
        {"type": "subscribe", "id": "a", "db": "d", "since": 0}))
    assert isinstance(resumed, Subscribe) and resumed.catch_up is True


# -- outbox.py -------------------------------------------------------------------------

def test_joined_runs_cap_each_send_at_the_joined_write_bytes() -> None:
    """Kills ``joined_runs`` without ``size < JOINED_WRITE_BYTES`` (one send of every
    frame, however many MiB)."""
    frame = b"x" * (JOINED_WRITE_BYTES // 4)
    runs = list(joined_runs([frame] * 10))
    assert runs == [(0, 4), (4, 8), (8, 10)]
    assert list(joined_runs([b"y" * (JOINED_WRITE_BYTES * 2), b"z"])) == [(0, 1), (1, 2)]


# -- catchup.py ------------------------------------------------------------------------

def test_the_first_page_asks_for_the_first_size() -> None:
    """Kills ``PageSizer.__init__`` sizing by ``most`` instead of ``min(first, most)``."""
    assert PageSizer(target=1 << 20, first=8).size == 8
    assert PageSizer(target=1 << 20, first=10_000).size == PAGE_SIZE
    assert PageSizer(target=1 << 20, first=0).size == 1


def test_small_rows_never_ask_for_more_than_the_most_rows() -> None:
    """Kills ``PageSizer.record`` without ``min(self.most, …)``: tiny rows asked CouchDB
    for target/row-size rows (thousands) in one page."""
    sizer = PageSizer(target=1 << 20, first=8, most=PAGE_SIZE)
    sizer.record(8, 8 * 100)  # 100 bytes a row: 10,485 rows would fill the target
    assert sizer.size == PAGE_SIZE
    sizer.record(4, 4 * (1 << 19))  # 512 KiB a row: 2 rows
    assert sizer.size == 2


class _Answer:
    """A stand-in CouchDB 3 cluster answer to one ``_changes?limit=`` request."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, Any, dict[str, Any]]] = []

    async def request(self, method: str, segments: Any, **kwargs: Any) -> Any:
        self.requests.append((method, segments, kwargs))
        return self.answer


async def test_a_full_page_resumes_after_its_last_row_not_at_last_seq() -> None:
    """Kills ``fetch_changes`` taking ``last_seq`` after a full page. A clustered CouchDB
    that stops at ``limit`` moves ``last_seq`` past rows it read but did not send
    (fabric_view_changes): the next page must start at the last row's seq."""
    rows = [{"seq": f"{i}-row", "id": f"d{i}", "changes": [{"rev": "1-a"}]} for i in (1, 2)]
    transport = _Answer({"results": rows, "last_seq": "9-past-unsent-rows"})
    got, next_since, more = await fetch_changes(
        transport, "db", FeedParams.build(), "0", page_size=2)  # type: ignore[arg-type]
    assert got == rows and more is True
    assert next_since == "2-row"
    # A short page is the end: there last_seq is where the live feed follows on.
    transport = _Answer({"results": rows[:1], "last_seq": "9-end"})
    _got, next_since, more = await fetch_changes(
        transport, "db", FeedParams.build(), "0", page_size=2)  # type: ignore[arg-type]
    assert (next_since, more) == ("9-end", False)


# -- hub.py ----------------------------------------------------------------------------

class _LeavingSink:
    """A direct-write subscriber that leaves the feed while its write is settled."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.settled = 0

    def feed_changes(self, feed: SharedFeed, changes: Sequence[PreparedChange]) -> None:
        raise AssertionError("not asked: it has a socket")

    def direct_socket(self, feed: SharedFeed) -> socket.socket | None:
        return self.sock

    def wrote_directly(self, feed: SharedFeed, changes: Sequence[PreparedChange],
                       frame: bytes, sent: int) -> None:
        self.settled += 1
        feed.subscribers.pop(self, None)  # e.g. released while the batch went out

    def feed_state(self, feed: SharedFeed, state: str, message: Any, size: int) -> None:
        """Unused."""

    def feed_failed(self, feed: SharedFeed, exc: BaseException) -> None:
        """Unused."""


def test_a_sink_that_left_during_the_send_loop_is_not_put_on_the_roster() -> None:
    """Kills ``_fan_out``'s ``sent == whole and sink in feed.subscribers`` → ``sent ==
    whole``: a sink no longer subscribed stayed on the direct roster, and the next batch
    was sent to its socket (the roster is taken as it is, unasked)."""
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        hub = FeedHub(None, lambda payload: SimpleNamespace(payloadHybi=payload), Clock())  # type: ignore[arg-type]
        feed = SharedFeed("f1", "db", FeedParams.build())
        sink = _LeavingSink(ours)
        feed.subscribers[sink] = None
        hub._on_changes(feed, [{"seq": "1-x", "id": "a", "changes": [{"rev": "1-a"}]}])
        assert sink.settled == 1
        assert sink not in feed.direct and not feed.subscribers
        hub._on_changes(feed, [{"seq": "2-x", "id": "b", "changes": [{"rev": "1-b"}]}])
        assert sink.settled == 1, "a batch was sent to a sink that left the feed"
    finally:
        ours.close()
        theirs.close()


def test_change_batch_of_one_is_its_frame() -> None:
    """(Guard for the above: a one-change batch is framed as that change.)"""
    batch = ChangeBatch([PreparedChange("a", "1-a", 1, SimpleNamespace(payloadHybi=b"F"), 1, 0.0)])
    assert batch.frame() == b"F"
