"""The sans-IO message layer: parsing, validation, building."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from gateway.couch.urls import encode_query
from gateway.errors import Forbidden
from gateway.ws.catchup import Join, Verdict, fetch_changes, rev_generation
from gateway.ws.handshake import origin_allowed
from gateway.ws.hub import PreparedChange
from gateway.ws.protocol import (
    FeedParams,
    Ping,
    ProtocolError,
    Subscribe,
    change_message,
    closing_message,
    encode,
    exception_message,
    parse_client_message,
)
from tests.ws.conftest import validate_server_message


def test_subscribe_is_parsed_and_normalised() -> None:
    a = parse_client_message(json.dumps({"type": "subscribe", "id": "x", "db": "d",
                                         "filter": "_doc_ids", "doc_ids": ["b", "a"]}))
    b = parse_client_message(json.dumps({"type": "subscribe", "id": "y", "db": "d",
                                         "filter": "_doc_ids", "doc_ids": ["a", "b"]}))
    assert isinstance(a, Subscribe) and isinstance(b, Subscribe)
    assert a.params == b.params and hash(a.params) == hash(b.params)
    assert a.params.changes_body() == {"doc_ids": ["a", "b"]}
    s1 = FeedParams.build(filter="_selector", selector={"a": 1, "b": 2})
    s2 = FeedParams.build(filter="_selector", selector={"b": 2, "a": 1})
    assert s1 == s2 and s1 != FeedParams.build(filter="_selector", selector={"a": 2})
    assert not a.catch_up
    assert parse_client_message(b'{"type":"subscribe","id":"x","db":"d","since":0}').catch_up


@pytest.mark.parametrize("since", [b"1e308", b"2.0", b"1E2"])
def test_a_number_seq_with_a_fraction_or_exponent_is_refused(since: bytes) -> None:
    """JSON Schema's ``integer`` takes them; they were echoed back as floats."""
    with pytest.raises(ProtocolError) as info:
        parse_client_message(b'{"type":"subscribe","id":"x","db":"d","since":' + since + b"}")
    assert info.value.error == "bad_message" and info.value.sub_id == "x"
    assert "(since)" in info.value.reason and "whole number" in info.value.reason
    assert parse_client_message(b'{"type":"subscribe","id":"x","db":"d","since":20}').since == 20


def _nested_selector(depth: int) -> bytes:
    return (b'{"type":"subscribe","id":"deep","db":"d","filter":"_selector","selector":'
            + b'{"$and":[' * depth + b'{"a":1}' + b"]}" * depth + b"}")


def test_messages_nested_too_deep_are_refused_before_anything_recurses() -> None:
    """A 460-level selector was accepted (``subscribed``), then the shared feed failed
    with a RecursionError reported as a lost CouchDB connection, retried for ever."""
    with pytest.raises(ProtocolError) as info:
        parse_client_message(_nested_selector(460))
    assert info.value.error == "bad_message" and info.value.sub_id == "deep"
    assert "nested more than 64 levels" in info.value.reason
    with pytest.raises(ProtocolError):  # a ping's data is echoed back in its pong
        parse_client_message(b'{"type":"ping","data":' + b"[" * 100 + b"]" * 100 + b"}")
    from gateway.ws.protocol import _nesting

    assert [_nesting(v) for v in (3, "x", {}, [], {"a": [1, {"b": []}]}, [[[]]], [1, [2]])] \
        == [0, 0, 1, 1, 4, 3, 2]
    # 31 $and levels (each an object and an array) and the message itself: 64 in all
    assert parse_client_message(_nested_selector(31)).params.selector is not None
    with pytest.raises(ProtocolError):
        parse_client_message(_nested_selector(32))


@pytest.mark.parametrize("raw, code", [
    (b"\xff", "bad_message"),
    (b"null", "bad_message"),
    (b'{"type": 3}', "unknown_type"),
    (b'{"type": "subscribe", "id": "", "db": "d"}', "bad_message"),
    (b'{"type": "subscribe", "id": "x", "db": "d", "filter": "_view"}', "bad_message"),
    (b'{"type": "subscribe", "id": "x", "db": "d", "query": {"a": "b"}}', "bad_message"),
    (b'{"type": "subscribe", "id": "x", "db": "d", "filter": "nofilter"}', "bad_message"),
    # _changes's own parameters are the gateway's: another limit, feed, seq_interval or
    # descending would end, cut or reorder the shared feed and its catch-up reads
    *[(json.dumps({"type": "subscribe", "id": "x", "db": "d", "filter": "app/f",
                   "query": {name: "1"}}).encode(), "bad_message")
      for name in ("limit", "feed", "seq_interval", "descending", "since", "style")],
    (b"[" * 60_000 + b"]" * 60_000, "bad_message"),  # nested too deep for the parser
])
def test_invalid_messages(raw: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw)
    assert info.value.error == code
    validate_server_message(info.value.message())


def test_ping_and_server_messages_match_schemas() -> None:
    assert parse_client_message(b'{"type":"ping","data":"x"}') == Ping("x")
    row = {"seq": "3-abc", "id": "d", "changes": [{"rev": "1-x"}], "doc": {"_id": "d"}}
    validate_server_message(change_message("f1", row))
    validate_server_message(closing_message(1001, "bye", {"s": None, "t": 4}))
    validate_server_message(exception_message(Forbidden("no"), "s"))
    validate_server_message(exception_message(RuntimeError("secret detail")))
    assert b"secret" not in encode(exception_message(RuntimeError("secret detail")))


def live(doc_id: str, rev: str) -> PreparedChange:
    return PreparedChange(doc_id, rev, 0, None, 10, 0.0)


def test_join_sorts_buffered_changes_by_what_was_sent() -> None:
    join = Join()
    join.record("a", "2-x")
    join.record("b", "1-y")
    verdicts = [join.take(live(doc_id, rev)) for doc_id, rev in
                [("a", "1-w"), ("a", "2-x"), ("b", "2-z"), ("c", "1-q"), ("b", "2-z")]]
    assert verdicts == [Verdict.CHECK, Verdict.SENT, Verdict.NEW, Verdict.NEW, Verdict.SENT]
    assert rev_generation("12-abc") == 12 and rev_generation("junk") == 0


def test_join_checks_another_revision_of_the_same_generation() -> None:
    """A conflicting branch in the buffer is stale (it won, then lost) or the winner now:
    only CouchDB can say, like for a lower generation."""
    join = Join()
    join.record("a", "2-x")
    assert join.verdict("a", "2-x") is Verdict.SENT  # the same revision
    assert join.verdict("a", "1-w") is Verdict.CHECK  # stale, or an older branch that won
    assert join.verdict("a", "2-y") is Verdict.CHECK  # stale, or a conflicting one that won
    assert join.verdict("a", "3-z") is Verdict.NEW
    assert join.verdict("b", "1-q") is Verdict.NEW
    # A conflicting branch confirmed as the winner is the last sent; the first is not.
    assert join.take(live("a", "2-y")) is Verdict.CHECK
    join.passed("a", "2-y")
    assert [join.verdict("a", rev) for rev in ("2-y", "2-x")] == [Verdict.SENT, Verdict.CHECK]


def test_the_catch_up_remembers_the_last_state_it_sent_of_a_document() -> None:
    join = Join()
    join.record("a", "3-x")
    join.record("a", "2-b")  # a later page: the winner 3-x was deleted, 2-b won
    assert join.sent == {"a": "2-b"}  # not the higher generation sent before it
    assert join.verdict("a", "2-b") is Verdict.SENT and join.verdict("a", "2-c") is Verdict.CHECK


def test_an_older_branch_found_to_win_replaces_what_was_sent() -> None:
    join = Join()
    join.record("a", "3-x")
    assert join.take(live("a", "2-b")) is Verdict.CHECK  # not noted: it is checked first
    join.passed("a", "2-b")  # CouchDB says 2-b is the winner now
    assert join.verdict("a", "2-b") is Verdict.SENT and join.verdict("a", "4-x") is Verdict.NEW


def test_join_filters_each_document_until_the_feed_passes_it() -> None:
    """CouchDB orders a feed per document only: shards interleave their rows."""
    join = Join()
    join.record("a", "1-a")
    join.record("b", "1-b")
    join.merged, join.until = True, 100.0
    # the shared feed was behind: it now delivers what the catch-up already sent
    assert join.take(live("a", "1-a")) is Verdict.SENT
    assert join.take(live("c", "1-c")) is Verdict.NEW  # news from another shard ...
    assert join.take(live("b", "1-b")) is Verdict.SENT  # ... before an old row of this one
    assert join.take(live("a", "2-a")) is Verdict.NEW  # a's first news: a is past the catch-up
    assert join.take(live("a", "1-a")) is Verdict.NEW and join.sent == {"b": "1-b"}
    assert join.trailing(99.0) and not join.trailing(100.0)
    assert join.take(live("b", "2-b")) is Verdict.NEW and not join.trailing(0.0)


def test_origins() -> None:
    assert origin_allowed(None, "h:1", ())
    assert origin_allowed("http://h:1", "h:1", ())
    assert not origin_allowed("http://evil", "h:1", ())
    assert origin_allowed("http://app", "h:1", ("http://app",))
    assert origin_allowed("http://any", "h:1", ("*",))
    assert not origin_allowed("null", "h:1", ("http://app",))


def test_behind_tls_the_own_origin_is_https_but_for_loopback_names() -> None:
    """With a ``Secure`` cookie the gateway is served over TLS: an ``http://`` page of
    its host (what a network attacker can write) is not its own, save the names browsers
    count as secure over plain http (a developer's localhost)."""
    assert origin_allowed("http://gw.example", "gw.example", ())  # not known to be TLS
    assert not origin_allowed("http://gw.example", "gw.example", (), https_only=True)
    assert origin_allowed("https://gw.example", "gw.example", (), https_only=True)
    assert origin_allowed("HTTPS://GW.example", "gw.example", (), https_only=True)
    assert not origin_allowed("https://gw.example", "other.example", (), https_only=True)
    for loopback in ("localhost:8080", "app.localhost:8080", "127.0.0.1:8080", "[::1]:8080"):
        assert origin_allowed(f"http://{loopback}", loopback, (), https_only=True), loopback
    assert not origin_allowed("http://localhost.example", "localhost.example", (),
                              https_only=True)
    assert origin_allowed("http://app.example", "gw.example", ("http://app.example",),
                          https_only=True)  # listed by name: the operator's choice


async def test_a_full_catch_up_page_resumes_after_its_last_row_not_last_seq() -> None:
    """A clustered CouchDB stopping at ``limit`` can report a ``last_seq`` past rows it
    never sent (fabric_view_changes): the next page must start at the last row's seq."""
    asked: list[Any] = []

    class Pages:
        async def request(self, method: str, segments: list[str], **kwargs: Any) -> Any:
            asked.append(kwargs["params"]["since"])
            if len(asked) == 1:
                return {"results": [{"seq": "1-a", "id": "a", "changes": [{"rev": "1-x"}]},
                                    {"seq": "2-b", "id": "b", "changes": [{"rev": "1-y"}]}],
                        "last_seq": "9-past-unsent-rows"}
            return {"results": [{"seq": "3-c", "id": "c", "changes": [{"rev": "1-z"}]}],
                    "last_seq": "4-end"}

    params = FeedParams.build(filter="app/f")
    rows, since, more = await fetch_changes(Pages(), "d", params, 0, page_size=2)  # type: ignore[arg-type]
    assert [r["id"] for r in rows] == ["a", "b"] and more and since == "2-b"
    rows, since, more = await fetch_changes(Pages(), "d", params, since, page_size=2)  # type: ignore[arg-type]
    assert [r["id"] for r in rows] == ["c"] and not more and since == "4-end"
    assert asked == [0, "2-b"]


async def test_a_catch_up_sends_a_design_filters_parameters_as_written() -> None:
    asked: list[str] = []

    class Recorder:
        async def request(self, method: str, segments: list[str], **kwargs: Any) -> Any:
            asked.append(encode_query(kwargs["params"]))
            return {"results": [], "last_seq": "1-x"}

    params = FeedParams.build(filter="app/by_key", query={"key": "abc", "kind": "k"})
    await fetch_changes(Recorder(), "d", params, "0")  # type: ignore[arg-type]
    assert "key=abc" in asked[0].split("&") and "kind=k" in asked[0].split("&")


def test_a_feed_back_live_gives_the_join_filter_its_full_time_again() -> None:
    """Rows the catch-up sent may still come after an interruption of the shared feed."""
    from types import SimpleNamespace

    from gateway.ws.catchup import TRAILING_SECONDS
    from gateway.ws.server import ChangesServerProtocol

    clock = Clock()
    join = Join()
    join.record("a", "1-a")
    join.until = 10.0
    sub = SimpleNamespace(active=True, trailing=join)
    queued: list[Any] = []
    conn = SimpleNamespace(by_feed={"f": sub}, factory=SimpleNamespace(clock=clock),
                           _enqueue=lambda item, _sub: queued.append(item))
    clock.advance(25)
    ChangesServerProtocol.feed_state(conn, "f", "interrupted", b"m", 1)  # type: ignore[arg-type]
    assert join.until == 10.0
    ChangesServerProtocol.feed_state(conn, "f", "live", b"m", 1)  # type: ignore[arg-type]
    assert join.until == 25 + TRAILING_SECONDS and join.trailing(40.0) and len(queued) == 2


async def test_settle_asks_about_older_rows_and_keeps_the_order() -> None:
    """A row older than was sent goes out only if CouchDB says it is the winner now;
    rows buffered behind it wait, so the order is kept either way."""
    from types import SimpleNamespace

    from gateway.ws.server import ChangesServerProtocol

    join = Join()
    join.record("a", "3-a")
    join.record("b", "3-b")
    for change in (live("a", "2-stale"), live("c", "1-c"), live("b", "2-won"), live("d", "1-d")):
        join.buffer_live(change)
    sub = SimpleNamespace(active=True, join=join, trailing=None)
    delivered: list[str] = []
    asked: list[str] = []

    async def still_current(_sub: Any, change: PreparedChange) -> bool:
        asked.append(change.rev)
        if change.rev == "2-won":
            join.buffer_live(live("e", "1-e"))  # arrives while CouchDB is asked
        return change.rev == "2-won"

    conn = SimpleNamespace(
        _still_current=still_current, _ending=False, factory=SimpleNamespace(clock=Clock()),
        _deliver=lambda _sub, change: delivered.append(f"{change.doc_id}@{change.rev}"),
        _trail=lambda sub, join: setattr(sub, "trailing", join))
    await ChangesServerProtocol._settle(conn, sub, join)  # type: ignore[arg-type]
    assert asked == ["2-stale", "2-won"]
    assert delivered == ["c@1-c", "b@2-won", "d@1-d", "e@1-e"]
    assert sub.join is None and sub.trailing is join and join.merged
    assert join.verdict("b", "2-won") is Verdict.SENT  # the new winner is what was sent


def test_catch_up_pages_are_sized_by_the_rows_seen() -> None:
    from gateway.ws.catchup import PAGE_SIZE, PageSizer

    pages = PageSizer(target=64 * 1024, first=4)
    assert pages.size == 4  # documents of unknown size
    pages.record(4, 4 * 50_000)  # 50 kB a row: one fits
    assert pages.size == 1
    pages.record(1, 8_000_000)  # one larger than the target still comes, one at a time
    assert pages.size == 1
    pages.record(2, 200)  # small rows again: many per page, at most PAGE_SIZE
    assert pages.size == PAGE_SIZE
    pages.record(0, 0)  # an empty page says nothing
    assert pages.size == PAGE_SIZE
    assert PageSizer(target=1024, first=10_000).size == PAGE_SIZE
