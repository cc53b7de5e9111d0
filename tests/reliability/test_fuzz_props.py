"""Property-based fuzzing (hypothesis): WebSocket client messages and the changes-feed parser.

* ``parse_client_message`` on arbitrary bytes, arbitrary JSON and near-valid messages:
  it returns a message or raises :class:`ProtocolError` with a documented code — nothing
  else; the error message it produces is valid against ``api_schema/ws/error.schema.json``.
* The same corpus over a real socket: every server reply is schema-valid, every error code
  documented, and the connection keeps answering (a ``ping`` after each message).
* ``ChangesParser`` on arbitrary bytes split anywhere: only ``FeedProtocolError``; the
  events do not depend on the chunking; a partial line never exceeds the line limit.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.couch.changes.parser import ChangeRow, ChangesParser, FeedEnd, FeedErrorLine, Heartbeat
from gateway.errors import FeedProtocolError
from gateway.ws.protocol import (
    CLIENT_TYPES,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    parse_client_message,
)
from tests.reliability.conftest import Couch, record
from tests.ws.conftest import WsServer, validate_server_message

# docs/websocket.md: message errors, subscription errors and the REST API's codes.
DOCUMENTED_ERRORS = {
    "bad_message", "unknown_type", "too_many_subscriptions", "duplicate_id",
    "duplicate_subscription", "not_subscribed", "access_revoked", "unauthorized",
    "forbidden", "not_found", "upstream_unavailable", "upstream_timeout", "bad_request",
    "illegal_database_name",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
names = st.from_regex(r"\A[a-z][a-z0-9_$()+/-]{0,20}\Z") | st.text(max_size=30)
seqs = st.sampled_from(["now", 0, 1, "1-abc", ""]) | st.integers(-5, 10**12) | st.text(max_size=40) | json_values


@st.composite
def near_valid(draw: Any) -> dict[str, Any]:
    """Messages that mostly follow the schema, with some fields wrong or extra."""
    kind = draw(st.sampled_from([*CLIENT_TYPES, "Subscribe", "", "pong"]))
    message: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        message["id"] = draw(st.text(max_size=70) | json_values)
    if kind == "subscribe" or draw(st.booleans()):
        message["db"] = draw(names)
    for key, values in (
        ("since", seqs),
        ("filter", st.sampled_from(["_doc_ids", "_selector", "_view", "a/b", "_design/x", "/", ""])),
        ("doc_ids", st.lists(st.text(max_size=10), max_size=5) | json_values),
        ("selector", json_values),
        ("view", st.sampled_from(["a/b", "a", "", "a/b/c"]) | json_values),
        ("query", json_values),
        ("include_docs", json_values),
        ("data", json_values),
        (draw(st.text(min_size=1, max_size=6)), json_values),
    ):
        if draw(st.integers(0, 3)) == 0:
            message[key] = draw(values)
    return message


ids = st.text(min_size=1, max_size=64)
valid_messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("subscribe"), "id": ids, "db": st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z")},
        optional={"since": st.sampled_from(["now", 0, "5-abc"]), "include_docs": st.booleans()},
    ),
    st.fixed_dictionaries(
        {"type": st.just("subscribe"), "id": ids, "db": st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z"),
         "filter": st.just("_doc_ids"),
         "doc_ids": st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4, unique=True)},
    ),
    st.fixed_dictionaries({"type": st.just("unsubscribe"), "id": ids}),
    st.fixed_dictionaries({"type": st.just("ping")},
                          optional={"data": st.integers() | st.text(max_size=20) | st.none()}),
)

frames = (
    valid_messages.map(lambda m: json.dumps(m).encode())
    | st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | near_valid().map(lambda m: json.dumps(m).encode())
    | near_valid().map(lambda m: json.dumps(m, ensure_ascii=False).encode("utf-8", "surrogatepass"))
)

COUNTS: dict[str, int] = {"messages": 0, "accepted": 0, "protocol_errors": 0}


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame=frames)
def test_parse_client_message_accepts_or_raises_protocol_error_only(frame: bytes) -> None:
    COUNTS["messages"] += 1
    try:
        message = parse_client_message(frame)
    except ProtocolError as exc:
        COUNTS["protocol_errors"] += 1
        assert exc.error in {"bad_message", "unknown_type"}
        validate_server_message(exc.message())
        json.dumps(exc.message())  # serialisable
        return
    COUNTS["accepted"] += 1
    assert isinstance(message, Subscribe | Unsubscribe | Ping)
    if isinstance(message, Subscribe):
        assert message.db and isinstance(message.db, str)


def test_zz_record_parse_counts() -> None:
    if COUNTS["messages"]:
        record("fuzz", "hypothesis_ws_parse_client_message", **COUNTS, crashes=0, passed=True)


# --------------------------------------------------------------------------- over the socket

def _corpus(count: int) -> list[bytes]:
    corpus: list[bytes] = []

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frame=frames)
    def collect(frame: bytes) -> None:
        corpus.append(frame)

    collect()
    return corpus


def _safe_for_pouchdb(frame: bytes, db: str) -> bytes:
    """pouchdb-server crashes on ``_selector`` and on missing filters/views on ``_changes``:
    point any subscription that carries a filter at a database that does not exist."""
    try:
        data = json.loads(frame)
    except ValueError:
        return frame
    if isinstance(data, dict) and isinstance(data.get("db"), str):
        if data.get("db") == db or any(k in data for k in ("filter", "selector", "view", "query")):
            data["db"] = "nonexistent_" + "x" * 4
        return json.dumps(data).encode()
    return frame


async def test_ws_fuzzed_messages_over_a_live_socket(
    ws_server: WsServer, make_user: Any, couch: Couch, couch_backend: Any,
) -> None:
    user = await make_user()
    db = couch.new_db(members=[user.name])
    try:
        token = await ws_server.login(user)
        client = await ws_server.connect(token)
        watcher = await ws_server.connect(token)
        assert (await watcher.subscribe("w", db))["type"] == "subscribed"
        corpus = _corpus(300)
        errors: dict[str, int] = {}
        for n, frame in enumerate(corpus):
            if couch_backend.is_pouchdb:
                frame = _safe_for_pouchdb(frame, db)
            try:
                frame.decode("utf-8")
                binary = False
            except UnicodeDecodeError:
                binary = True  # a text frame must be UTF-8 (RFC 6455 closes with 1007)
            client.protocol.sendMessage(frame, isBinary=binary)
            client.send({"type": "ping", "data": n})
            await client.next("pong", where=lambda m, n=n: m.get("data") == n, timeout=20)
        client.check()  # every reply validated against its schema
        for message in client.messages:
            if message["type"] == "error":
                errors[message["error"]] = errors.get(message["error"], 0) + 1
                assert message["error"] in DOCUMENTED_ERRORS, message
        assert not client.protocol.closed.called
        couch.call("PUT", f"/{db}/after-fuzz", {})
        assert (await watcher.next("change"))["id"] == "after-fuzz"
        record("fuzz", "hypothesis_ws_live_socket", messages=len(corpus),
               replies=len(client.messages), errors_by_code=errors, crashes=0,
               connection_survived=True, passed=True)
    finally:
        couch.delete_db(db)


# --------------------------------------------------------------------------- feed parser

rows = st.fixed_dictionaries(
    {"seq": st.integers(0, 10**9) | st.text(min_size=1, max_size=30),
     "id": st.text(max_size=20),
     "changes": st.lists(st.fixed_dictionaries({"rev": st.text(max_size=12)}), max_size=3)},
    optional={"deleted": st.booleans(), "doc": json_values},
)
lines = st.one_of(
    rows.map(lambda r: json.dumps(r, ensure_ascii=False).encode()),
    st.just(b""),                                   # heartbeat
    st.just(b'{"last_seq": "9-x", "pending": 0}'),
    st.just(b'{"error": "unauthorized", "reason": "gone"}'),
    st.binary(max_size=60),                          # garbage
    json_values.map(lambda v: json.dumps(v).encode()),
)


def _parse(parser: ChangesParser, chunks: list[bytes]) -> tuple[list[Any], str | None]:
    events: list[Any] = []
    for chunk in chunks:
        try:
            events.extend(parser.feed(chunk))
        except FeedProtocolError as exc:
            return events, type(exc).__name__
        assert parser.pending_bytes <= parser.max_line_bytes
    return events, None


PARSER = {"streams": 0, "bytes": 0, "protocol_errors": 0}


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.lists(lines, max_size=12).map(lambda ls: b"\n".join(ls) + b"\n"),
       cuts=st.lists(st.integers(0, 4000), max_size=30), limit=st.sampled_from([64, 1024, 1 << 20]))
def test_parser_arbitrary_bytes_any_chunking_only_documented_errors(
    body: bytes, cuts: list[int], limit: int,
) -> None:
    PARSER["streams"] += 1
    PARSER["bytes"] += len(body)
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    whole, whole_error = _parse(ChangesParser(limit), [body])
    split, split_error = _parse(ChangesParser(limit), chunks)
    if whole_error is None:
        assert split_error is None and split == whole
    else:
        PARSER["protocol_errors"] += 1
        assert split_error == whole_error
        # the events before the error do not depend on the chunking either
        assert split[: len(whole)] == whole[: len(split)]
    for event in split:
        assert isinstance(event, ChangeRow | Heartbeat | FeedEnd | FeedErrorLine)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), limit=st.integers(1, 200))
def test_parser_memory_bounded_by_line_limit(data: bytes, limit: int) -> None:
    parser = ChangesParser(limit)
    for i in range(0, len(data), 97):
        try:
            parser.feed(data[i : i + 97])
        except FeedProtocolError:
            parser.reset()
        assert parser.pending_bytes <= limit


def test_zz_record_parser_counts() -> None:
    if PARSER["streams"]:
        record("fuzz", "hypothesis_changes_parser", **PARSER, crashes=0, passed=True)


@pytest.mark.parametrize("bad", [b"\xff\xfe\n", b"[]\n", b'{"seq": 1}\n', b'{"id": 1, "seq": 1, "changes": []}\n'])
def test_parser_known_bad_lines(bad: bytes) -> None:
    with pytest.raises(FeedProtocolError):
        ChangesParser().feed(bad)
