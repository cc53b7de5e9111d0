"""Pacing of long fan-outs: upstream reads pause, changes then come in one batch, none lost."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.couch import Database
from gateway.ws import hub as hub_module
from gateway.ws.hub import FeedHub, PreparedChange, SharedFeed
from gateway.ws.protocol import FeedParams
from tests.ws.conftest import WsServer


class _Sink:
    """Takes ``cost`` seconds of the (fake) clock per batch."""

    def __init__(self, clock: Clock, cost: float) -> None:
        self.clock = clock
        self.cost = cost
        self.batches: list[list[str]] = []

    def feed_changes(self, feed: SharedFeed, changes: Sequence[PreparedChange]) -> None:
        self.batches.append([c.doc_id for c in changes])
        self.clock.advance(self.cost)

    def direct_socket(self, feed: SharedFeed) -> None:
        """Never: every batch comes through :meth:`feed_changes`."""

    def wrote_directly(self, feed: SharedFeed, changes: Sequence[PreparedChange],
                       frame: bytes, sent: int) -> None:
        """Unused."""

    def feed_state(self, feed: SharedFeed, state: str, message: Any, size: int) -> None:
        """Unused."""

    def feed_failed(self, feed: SharedFeed, exc: BaseException) -> None:
        """Unused."""


def _hub_with_sink(cost: float) -> tuple[FeedHub, SharedFeed, _Sink, Clock]:
    clock = Clock()
    hub = FeedHub(None, lambda payload: SimpleNamespace(payloadHybi=payload), clock)  # type: ignore[arg-type]
    feed = SharedFeed("f1", "db", FeedParams.build())
    sink = _Sink(clock, cost)
    feed.subscribers[sink] = None
    return hub, feed, sink, clock


def _rows(*ids: str) -> list[dict[str, Any]]:
    return [{"seq": f"{i}-x", "id": doc_id, "changes": [{"rev": "1-a"}]}
            for i, doc_id in enumerate(ids)]


def test_a_quick_fan_out_does_not_pause_the_feed() -> None:
    hub, feed, sink, _clock = _hub_with_sink(cost=0.001)
    assert hub._on_changes(feed, _rows("a")) is None
    assert sink.batches == [["a"]]


def test_a_long_fan_out_pauses_reads_for_a_share_of_its_time() -> None:
    hub, feed, sink, clock = _hub_with_sink(cost=0.2)
    resume = hub._on_changes(feed, _rows("a", "b"))
    assert isinstance(resume, Deferred)
    fired: list[object] = []
    resume.addCallback(fired.append)
    assert sink.batches == [["a", "b"]] and fired == []
    pause = 0.2 * hub_module.PACING_FACTOR
    clock.advance(pause - 0.001)
    assert fired == []
    clock.advance(0.002)
    assert fired == [None] and feed.pacing is None


async def test_closing_a_paused_feed_lets_it_stop() -> None:
    hub, feed, _sink, clock = _hub_with_sink(cost=0.2)
    resume = hub._on_changes(feed, _rows("a"))
    assert resume is not None
    fired: list[object] = []
    resume.addCallback(fired.append)
    assert fired == []
    await hub._close(feed)
    assert fired == [None] and feed.pacing is None
    assert clock.getDelayedCalls() == []  # the pacing timer was cancelled


async def test_paced_feed_delivers_every_change_once_in_order(
    ws_server: WsServer, db: Database, make_user: Any, monkeypatch: Any
) -> None:
    """Every fan-out paces (threshold 0, long pauses): changes written meanwhile arrive
    batched, and each client still gets each change exactly once, in feed order."""
    monkeypatch.setattr(hub_module, "PACING_THRESHOLD", 0.0)
    monkeypatch.setattr(hub_module, "PACING_FACTOR", 2000.0)
    hub = ws_server.service.hub
    sizes: list[int] = []
    original = hub._on_changes

    def counting(feed: SharedFeed, rows: list[dict[str, Any]]) -> Any:
        sizes.append(len(rows))
        return original(feed, rows)

    monkeypatch.setattr(hub, "_on_changes", counting)
    user = await make_user()
    token = await ws_server.login(user)
    clients = [await ws_server.connect(token) for _ in range(3)]
    for i, client in enumerate(clients):
        answer = await client.subscribe(f"s{i}", db.name)
        assert answer["type"] == "subscribed", answer
    expected = [f"p{n:02d}" for n in range(30)]
    for doc_id in expected:
        await db.save({"_id": doc_id})
    for client in clients:
        got = await client.collect_changes(30)
        assert [c["id"] for c in got] == expected
    assert sum(sizes) == 30
    assert max(sizes) > 1  # the pauses really made batches
    for client in clients:
        await client.close()
