"""Pure unit tests of the changes feed: the sans-IO parser, backoff, and ChangesFeed's
reconnection, heartbeat and flow-control logic on a fake clock and an in-memory stream."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from gateway.couch.changes.backoff import Backoff
from gateway.couch.changes.feed import ChangesFeed, changes_request, is_retryable
from gateway.couch.changes.parser import (
    ChangeRow,
    ChangesParser,
    FeedEnd,
    FeedErrorLine,
    Heartbeat,
)
from gateway.couch.changes.subscriptions import normalize_options, options_key
from gateway.couch.urls import encode_query
from gateway.errors import (
    CouchTimeout,
    CouchUnreachable,
    FeedProtocolError,
    Forbidden,
    NotFound,
    Unauthorized,
    UpstreamServerError,
    error_body,
)

# -- parser -------------------------------------------------------------------------

ROWS = [
    {"seq": "1-g1AAAA", "id": "a", "changes": [{"rev": "1-x"}]},
    {"seq": 2, "id": "b/ü€😀", "changes": [{"rev": "1-y"}], "deleted": True},
    {"seq": [3, "x"], "id": "c", "changes": [{"rev": "2-z"}], "doc": {"_id": "c", "t": "é" * 50}},
]
STREAM = (
    b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in ROWS[:2])
    + b"\n\n"
    + json.dumps(ROWS[2], ensure_ascii=False).encode()
    + b"\r\n\n"
    + b'{"last_seq":"3-g1AAAA","pending":0}\n'
)
EXPECTED = [
    ChangeRow(ROWS[0]),
    ChangeRow(ROWS[1]),
    Heartbeat(),
    Heartbeat(),
    ChangeRow(ROWS[2]),
    Heartbeat(),
    FeedEnd("3-g1AAAA", 0),
]


def parse_in_chunks(data: bytes, cuts: list[int], limit: int = 1 << 20) -> list[Any]:
    parser = ChangesParser(max_line_bytes=limit)
    events: list[Any] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(data[start:cut])
        start = cut
    events += parser.feed(data[start:])
    assert parser.pending_bytes == 0
    return events


def test_parser_whole_stream() -> None:
    parser = ChangesParser()
    assert parser.feed(STREAM) == EXPECTED
    assert parser.ended is True


def test_parser_byte_by_byte_including_mid_utf8() -> None:
    assert parse_in_chunks(STREAM, list(range(len(STREAM)))) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_parser_any_chunking(cuts: list[int]) -> None:
    assert parse_in_chunks(STREAM, cuts) == EXPECTED


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"id": st.text(min_size=1), "seq": st.one_of(st.integers(), st.text())},
            optional={"doc": st.dictionaries(st.text(), st.text())},
        ).map(lambda r: {**r, "changes": [{"rev": "1-a"}]}),
        max_size=8,
    ),
    st.data(),
)
def test_parser_round_trips_arbitrary_rows(rows: list[dict[str, Any]], data: Any) -> None:
    stream = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert parse_in_chunks(stream, cuts) == [ChangeRow(r) for r in rows]


def test_parser_heartbeats_only() -> None:
    assert ChangesParser().feed(b"\n\n\r\n") == [Heartbeat(), Heartbeat(), Heartbeat()]


def test_parser_holds_partial_line() -> None:
    parser = ChangesParser()
    assert parser.feed(b'{"seq":1,"id":"a",') == []
    assert parser.pending_bytes == len(b'{"seq":1,"id":"a",')
    assert parser.feed(b'"changes":[]}\n') == [ChangeRow({"seq": 1, "id": "a", "changes": []})]


def test_parser_error_line() -> None:
    events = ChangesParser().feed(b'{"error":"unknown_error","reason":"function_clause"}\n')
    assert events == [FeedErrorLine("unknown_error", "function_clause")]


def test_parser_oversize_line_raises_without_buffering() -> None:
    parser = ChangesParser(max_line_bytes=100)
    parser.feed(b'{"seq":1,' + b" " * 80)
    with pytest.raises(FeedProtocolError, match="exceeds the limit of 100 bytes"):
        parser.feed(b" " * 30)
    assert parser.pending_bytes == 0


def test_parser_oversize_complete_line_raises() -> None:
    with pytest.raises(FeedProtocolError):
        ChangesParser(max_line_bytes=10).feed(b'{"seq":1,"id":"abc","changes":[]}\n')


def test_parser_line_at_the_limit_is_fine() -> None:
    line = b'{"seq":1,"id":"a","changes":[]}'
    assert ChangesParser(max_line_bytes=len(line)).feed(line + b"\n") != []


@pytest.mark.parametrize(
    "line",
    [b"{not json", b'"a string"', b"[1,2]", b'{"foo":1}', b'{"seq":1,"id":2,"changes":[]}',
     b"\xff\xfe{}"],
)
def test_parser_malformed_lines(line: bytes) -> None:
    with pytest.raises(FeedProtocolError) as raised:
        ChangesParser().feed(line + b"\n")
    status, body, _ = error_body(raised.value)
    assert status == 502 and body["error"] == "bad_feed"


def test_feed_protocol_error_is_never_built_from_a_status() -> None:
    from gateway.errors import CouchError

    assert type(CouchError.from_response(502, {})) is UpstreamServerError


# -- backoff, request building, options ---------------------------------------------


def test_backoff_grows_caps_jitters_and_resets() -> None:
    top = Backoff(initial=1, factor=2, cap=10, random=lambda: 1.0)
    assert [top.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    top.reset()
    assert top.next_delay() == 1
    bottom = Backoff(initial=1, factor=2, cap=10, random=lambda: 0.0)
    assert [bottom.next_delay() for _ in range(3)] == [0.5, 1, 2]
    huge = Backoff(initial=1, factor=2, cap=10)
    huge.attempts = 10_000
    assert 5 <= huge.next_delay() <= 10


def test_changes_request_get_and_post() -> None:
    method, params, body = changes_request({"filter": "d/f", "want": "x"}, 7, 500)
    assert (method, body) == ("GET", None)
    assert params == {"feed": "continuous", "heartbeat": 500, "filter": "d/f", "want": "x",
                      "since": 7}
    method, params, body = changes_request({"doc_ids": ["a"], "since": 1}, "now", 100)
    assert method == "POST" and params["filter"] == "_doc_ids" and params["since"] == "now"
    assert json.loads(body or b"") == {"doc_ids": ["a"]}
    method, params, body = changes_request({"selector": {"n": 1}}, 0, 100)
    assert method == "POST" and params["filter"] == "_selector"
    assert json.loads(body or b"") == {"selector": {"n": 1}}


def test_a_filter_functions_own_parameters_are_sent_as_written() -> None:
    """``_changes`` has no ``key``: one of that name is a filter function's, which reads
    ``req.query`` as sent; CouchDB would hand it ``'"abc"'`` if it went as JSON."""
    _, params, _ = changes_request(
        {"filter": "app/by_key", "key": "abc", "startkey": ["a", 1], "endkey": 5,
         "include_docs": True}, "7-g1", 500)
    query = encode_query(params)
    assert "&key=abc&" in query and "endkey=5" in query and "include_docs=true" in query
    assert "startkey=" + quote('["a",1]', safe="") in query
    assert "since=7-g1" in query


def test_retry_policy() -> None:
    assert is_retryable(CouchUnreachable()) and is_retryable(CouchTimeout())
    assert is_retryable(UpstreamServerError("boom", status=503))
    assert is_retryable(ConnectionDone())
    for fatal in (NotFound(), Forbidden(), Unauthorized(), FeedProtocolError()):
        assert not is_retryable(fatal)


def test_normalize_options_makes_equal_requests_equal() -> None:
    a = normalize_options({"doc_ids": ["b", "a", "b"], "include_docs": "true", "style": "main_only",
                           "conflicts": False, "heartbeat": 5, "feed": "continuous"})
    b = normalize_options({"filter": "_doc_ids", "doc_ids": ["a", "b"], "include_docs": True})
    assert a == b == {"filter": "_doc_ids", "doc_ids": ["a", "b"], "include_docs": True}
    assert options_key(a) == options_key(b)
    assert normalize_options({"view": "d/v"})["filter"] == "_view"
    assert normalize_options({"selector": {"x": 1}})["filter"] == "_selector"
    # seq_interval is a number (CouchDB: "the update seq with every Nth result").
    assert normalize_options({"seq_interval": "10"}) == normalize_options({"seq_interval": 10})
    assert normalize_options({"seq_interval": 10}) == {"seq_interval": 10}
    for bad in ({"limit": 3}, {"feed": "longpoll"}, {"doc_ids": "a"}, {"include_docs": "yes"},
                {"selector": [1]}, {"seq_interval": True}, {"seq_interval": 0},
                {"seq_interval": "x"}):
        with pytest.raises(ValueError):
            normalize_options(bad)


# -- ChangesFeed on a fake clock and an in-memory stream ------------------------------


class FakeBodyTransport:
    """What a response body's protocol sees as its transport."""

    def __init__(self) -> None:
        self.protocol: Any = None
        self.paused = False
        self.aborted = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.abortConnection()

    def abortConnection(self) -> None:
        if not self.aborted:
            self.aborted = True
            self.protocol.connectionLost(Failure(ConnectionAborted()))


class FakeResponse:
    code = 200

    def __init__(self) -> None:
        self.transport = FakeBodyTransport()

    def deliverBody(self, protocol: Any) -> None:
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)

    def end(self, reason: BaseException | None = None) -> None:
        self.transport.protocol.connectionLost(Failure(reason or ResponseDone()))


class FakeCouch:
    """A stand-in for CouchTransport: scripted answers, recorded requests."""

    def __init__(self, clock: Clock, update_seq: Any = 5) -> None:
        self.reactor = clock
        self.auth = None
        self.update_seq = update_seq
        self.info_errors: list[Exception] = []
        self.outcomes: list[Exception | FakeResponse] = []
        self.requests: list[tuple[str, dict[str, Any], bytes | None, Any]] = []
        self.responses: list[FakeResponse] = []

    async def request(self, method: str, segments: list[str], **kwargs: Any) -> Any:
        if self.info_errors:
            raise self.info_errors.pop(0)
        return {"update_seq": self.update_seq}

    async def open_stream(self, method: str, segments: list[str], **kwargs: Any) -> Any:
        body = kwargs.get("body")
        self.requests.append(
            (method, dict(kwargs["params"]), getattr(body, "data", None), kwargs.get("headers"))
        )
        outcome = self.outcomes.pop(0) if self.outcomes else FakeResponse()
        if isinstance(outcome, Exception):
            raise outcome
        self.responses.append(outcome)
        return outcome


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[list[dict[str, Any]], Any]] = []
        self.states: list[tuple[str, str | None]] = []
        self.errors: list[Exception] = []

    def on_changes(self, rows: list[dict[str, Any]], last_seq: Any) -> None:
        self.batches.append((rows, last_seq))

    def on_state(self, state: str, detail: str | None) -> None:
        self.states.append((state, detail))

    def on_error(self, exc: Exception) -> None:
        self.errors.append(exc)

    @property
    def ids(self) -> list[str]:
        return [row["id"] for rows, _ in self.batches for row in rows]


def row(seq: Any, doc_id: str, rev: str = "1-a") -> bytes:
    return json.dumps({"seq": seq, "id": doc_id, "changes": [{"rev": rev}]}).encode() + b"\n"


def make_feed(
    options: dict[str, Any] | None = None, since: Any = "now", **kwargs: Any
) -> tuple[ChangesFeed, FakeCouch, Clock, Recorder]:
    clock = Clock()
    couch = FakeCouch(clock)
    rec = Recorder()
    feed = ChangesFeed(
        couch,  # type: ignore[arg-type]
        "db",
        options or {},
        since=since,
        on_changes=kwargs.pop("on_changes", rec.on_changes),
        on_state=rec.on_state,
        on_error=rec.on_error,
        clock=clock,
        heartbeat=kwargs.pop("heartbeat", 1.0),
        backoff=kwargs.pop("backoff", Backoff(initial=1, factor=2, cap=8, random=lambda: 1.0)),
        **kwargs,
    )
    return feed, couch, clock, rec


def test_feed_resolves_now_delivers_and_resumes_after_a_drop() -> None:
    feed, couch, clock, rec = make_feed()
    ready = feed.ready()
    feed.startService()
    assert ready.called and feed.since == 5 and feed.state == "live"
    assert couch.requests[0][:3] == (
        "GET", {"feed": "continuous", "heartbeat": 1000, "since": 5}, None,
    )
    couch.responses[0].send(row(6, "a") + row(7, "b")[:10])
    couch.responses[0].send(row(7, "b")[10:] + b"\n")
    assert rec.batches == [([json.loads(row(6, "a"))], 6), ([json.loads(row(7, "b"))], 7)]
    couch.responses[0].end(ConnectionDone())
    assert feed.state == "interrupted" and len(couch.requests) == 1
    clock.advance(0.99)
    assert len(couch.requests) == 1
    clock.advance(0.02)
    assert len(couch.requests) == 2 and couch.requests[1][1]["since"] == 7
    assert [s for s, _ in rec.states] == ["connecting", "live", "interrupted", "connecting", "live"]
    assert "ConnectionDone" in (rec.states[2][1] or "")
    done = feed.stopService()
    assert done.called and feed.state == "stopped" and couch.responses[1].transport.aborted
    assert rec.states[-1] == ("stopped", None)


def test_feed_end_with_last_seq_reconnects_from_last_seq() -> None:
    feed, couch, clock, rec = make_feed(since=0)
    feed.startService()
    couch.responses[0].send(row(1, "a") + b'{"last_seq":9}\n')
    couch.responses[0].end()
    assert feed.since == 9 and rec.states[-1] == ("interrupted", "CouchDB ended the feed")
    clock.advance(1)
    assert couch.requests[1][1]["since"] == 9
    feed.stopService()


def test_feed_error_line_reconnects() -> None:
    feed, couch, clock, rec = make_feed(since=0)
    feed.startService()
    couch.responses[0].send(row(1, "a") + b'{"error":"x","reason":"y"}\n' + row(2, "b"))
    assert rec.ids == ["a"] and couch.responses[0].transport.aborted
    assert rec.states[-1] == ("interrupted", "CouchDB aborted the feed: x: y")
    clock.advance(1)
    assert couch.requests[1][1]["since"] == 1
    feed.stopService()


def test_heartbeat_silence_aborts_and_reconnects() -> None:
    feed, couch, clock, rec = make_feed(heartbeat=1.0)
    feed.startService()
    first = couch.responses[0]
    for _ in range(5):  # heartbeats keep it alive
        clock.advance(1.5)
        first.send(b"\n")
    assert not first.transport.aborted
    clock.advance(1.99)
    assert not first.transport.aborted
    clock.advance(0.02)
    assert first.transport.aborted
    assert rec.states[-1] == ("interrupted", "no heartbeat from CouchDB for 2 s")
    clock.advance(1)  # backoff was reset: the connection had received data
    assert len(couch.requests) == 2 and feed.state == "live"
    feed.stopService()


def test_backoff_grows_while_unreachable_and_resets_after_success() -> None:
    feed, couch, clock, _rec = make_feed(since=0)
    couch.outcomes = [CouchUnreachable(), CouchUnreachable(), CouchTimeout(),
                      UpstreamServerError("x", status=500), CouchUnreachable()]
    feed.startService()
    times = []
    for _ in range(5):
        before = len(couch.requests)
        waited = 0.0
        while len(couch.requests) == before:
            clock.advance(0.25)
            waited += 0.25
        times.append(waited)
    assert times == [1, 2, 4, 8, 8]  # capped at 8
    assert feed.state == "live" and len(couch.requests) == 6
    couch.responses[0].send(b"\n")
    couch.responses[0].end(ConnectionDone())
    clock.advance(1)
    assert len(couch.requests) == 7  # reset to the first delay
    feed.stopService()


def test_stop_cancels_a_pending_retry() -> None:
    feed, couch, clock, _rec = make_feed(since=0)
    couch.outcomes = [CouchUnreachable()]
    feed.startService()
    assert feed.state == "interrupted"
    done = feed.stopService()
    assert done.called and feed.state == "stopped"
    clock.advance(100)
    assert len(couch.requests) == 1 and clock.getDelayedCalls() == []


@pytest.mark.parametrize("exc", [NotFound("missing"), Forbidden("no"), Unauthorized("who")])
def test_fatal_answers_stop_the_feed(exc: Exception) -> None:
    feed, couch, clock, rec = make_feed(since=0)
    couch.outcomes = [exc]
    feed.startService()
    assert rec.errors == [exc] and feed.state == "stopped" and feed.error is exc
    clock.advance(100)
    assert len(couch.requests) == 1


def test_fatal_answer_before_ready_fails_ready() -> None:
    feed, couch, _clock, _rec = make_feed()
    couch.info_errors = [NotFound("no db")]
    ready = feed.ready()
    feed.startService()
    failures: list[Failure] = []
    ready.addErrback(failures.append)
    assert failures and failures[0].check(NotFound) and feed.state == "stopped"


def test_unreachable_before_ready_fires_ready_and_keeps_now_unresolved() -> None:
    feed, couch, clock, _rec = make_feed()
    couch.info_errors = [CouchUnreachable()]
    ready = feed.ready()
    feed.startService()
    assert ready.called and feed.since == "now" and couch.requests == []
    clock.advance(1)
    assert feed.since == 5 and couch.requests[0][1]["since"] == 5
    feed.stopService()


def test_oversize_line_is_fatal() -> None:
    feed, couch, _clock, rec = make_feed(since=0, max_line_bytes=50)
    feed.startService()
    couch.responses[0].send(b"{" + b" " * 60)
    assert feed.state == "stopped" and isinstance(rec.errors[0], FeedProtocolError)
    assert couch.responses[0].transport.aborted


def test_post_body_for_doc_ids() -> None:
    feed, couch, _clock, _rec = make_feed({"filter": "_doc_ids", "doc_ids": ["a"]}, since=0)
    feed.startService()
    method, params, body, headers = couch.requests[0]
    assert method == "POST" and params["filter"] == "_doc_ids"
    assert json.loads(body or b"") == {"doc_ids": ["a"]}
    assert headers == {"Content-Type": "application/json"}
    feed.stopService()


def test_identical_replayed_rows_are_dropped() -> None:
    feed, couch, clock, rec = make_feed(since=0)
    feed.startService()
    couch.responses[0].send(row("1-x", "a") + row("2-x", "b"))
    couch.responses[0].end(ConnectionDone())
    clock.advance(1)
    # a cluster rewind: the same rows again, then news
    couch.responses[1].send(row("1-y", "a") + row("2-y", "b") + row("3-y", "a", "2-b"))
    assert rec.ids == ["a", "b", "a"] and feed.duplicates_dropped == 2
    assert feed.since == "3-y"
    feed.stopService()


def test_a_resumed_connection_drops_repeats_only_until_its_first_heartbeat() -> None:
    """A replay comes before the connection is first idle; afterwards a row that looks
    like the last one of its document is news (a losing conflict revision deleted)."""
    feed, couch, clock, rec = make_feed(since=0)
    feed.startService()
    couch.responses[0].send(row("1-x", "a") + row("2-x", "b"))
    couch.responses[0].end(ConnectionDone())
    clock.advance(1)
    couch.responses[1].send(row("1-y", "a") + b"\n" + row("4-y", "a") + row("5-y", "b"))
    assert rec.ids == ["a", "b", "a", "b"] and feed.duplicates_dropped == 1
    assert feed.since == "5-y"
    feed.stopService()


def test_first_connection_delivers_rows_that_repeat_a_documents_state() -> None:
    """Deleting a losing conflict revision leaves the row looking as before: still news."""
    feed, couch, _clock, rec = make_feed(since=0)
    feed.startService()
    couch.responses[0].send(row("1-x", "a") + row("2-x", "a") + row("3-x", "a"))
    assert rec.ids == ["a", "a", "a"] and feed.duplicates_dropped == 0
    feed.stopService()


def test_rows_without_a_seq_keep_the_resume_position() -> None:
    """With ``seq_interval`` CouchDB sends ``"seq": null`` on most rows."""
    feed, couch, clock, rec = make_feed(since=0)
    feed.startService()
    couch.responses[0].send(row("5-x", "a") + row(None, "b"))
    assert rec.ids == ["a", "b"] and feed.since == "5-x"
    couch.responses[0].end(ConnectionDone())
    clock.advance(1)
    assert couch.requests[1][1]["since"] == "5-x"
    feed.stopService()


def test_raising_handler_does_not_stop_the_feed() -> None:
    calls: list[str] = []

    def boom(rows: list[dict[str, Any]], last_seq: Any) -> None:
        calls.append(rows[0]["id"])
        raise RuntimeError("consumer bug")

    feed, couch, _clock, _rec = make_feed(since=0, on_changes=boom)
    feed.startService()
    couch.responses[0].send(row(1, "a"))
    couch.responses[0].send(row(2, "b"))
    assert calls == ["a", "b"] and feed.state == "live"
    feed.stopService()


def test_slow_consumer_pauses_the_stream() -> None:
    pending: list[Deferred[None]] = []
    seen: list[str] = []
    calls: list[list[str]] = []

    def slow(rows: list[dict[str, Any]], last_seq: Any) -> Deferred[None]:
        seen.extend(r["id"] for r in rows)
        calls.append([r["id"] for r in rows])
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    feed, couch, clock, _rec = make_feed(since=0, on_changes=slow)
    feed.startService()
    response = couch.responses[0]
    response.send(row(1, "a"))
    assert response.transport.paused and seen == ["a"]
    response.send(row(2, "b"))  # already in flight: held back, in order
    response.send(row(3, "c"))
    assert seen == ["a"]
    clock.advance(60)  # no heartbeat expected while the consumer holds the stream
    assert not response.transport.aborted
    pending[0].callback(None)
    # What arrived while the consumer was busy comes in one call, in order.
    assert calls == [["a"], ["b", "c"]] and response.transport.paused
    pending[1].callback(None)
    assert seen == ["a", "b", "c"] and not response.transport.paused
    response.send(row(4, "d"))
    assert calls[-1] == ["d"]
    feed.stopService()


def test_reconnect_waits_for_the_consumer() -> None:
    pending: list[Deferred[None]] = []

    def slow(rows: list[dict[str, Any]], last_seq: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    feed, couch, clock, _rec = make_feed(since=0, on_changes=slow)
    feed.startService()
    couch.responses[0].send(row(1, "a"))
    couch.responses[0].end(ConnectionDone())
    clock.advance(10)
    assert len(couch.requests) == 1
    pending[0].callback(None)
    clock.advance(1)
    assert len(couch.requests) == 2 and couch.requests[1][1]["since"] == 1
    feed.stopService()
