"""Fan-out: one upstream ``_changes`` feed per (db, filter parameters, include_docs).

A :class:`FeedHub` keeps a refcounted :class:`SharedFeed` per key. The first subscriber
opens it (from the database's current seq), the last one to leave closes it. Every
change row is serialised once and framed once (``prepare``, i.e. Autobahn's
``WebSocketServerFactory.prepareMessage``) and the same prepared frame is handed to
every subscriber (``sendPreparedMessage``).

The upstream feed is a continuous :class:`~gateway.couch.changes.feed.ChangesFeed`: it
asks CouchDB for a heartbeat (``feed_heartbeat_ms``) and aborts a connection that stays
silent for twice as long, then reconnects (jittered backoff) from the last seq it
delivered, so a stalled or dead upstream is noticed within two heartbeats and nothing is
lost or repeated. Its ``interrupted``/``live`` transitions reach subscribers as
``feed_state`` messages.

The feed reads as the gateway's service identity; each subscriber is authorised as
its own user before it attaches (and re-checked periodically) by the WebSocket layer.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gateway.couch.changes.feed import ChangesFeed
from gateway.couch.transport import CouchTransport
from gateway.ws.protocol import FeedParams, Seq, change_message, encode, feed_state_message

__all__ = ["ChangeSink", "FeedHub", "FeedKey", "PreparedChange", "SharedFeed"]

log = logging.getLogger(__name__)

#: ``(db, params)``: what makes two subscriptions share a feed.
FeedKey = tuple[str, FeedParams]

#: Frames a serialised message once for many sockets (``factory.prepareMessage``).
Prepare = Callable[[bytes], Any]

#: Least seconds an upstream feed waits for response headers (plus one heartbeat).
CONNECT_TIMEOUT_MIN = 5.0


@dataclass(eq=False)
class PreparedChange:
    """One change, serialised and framed once, shared by every subscriber.

    Attributes:
        doc_id: The document id (for de-duplication and coalescing).
        rev: Its winning revision in this change.
        seq: The change's opaque seq.
        message: The prepared frame.
        size: Bytes of the serialised message (for queue budgets).
        received: Clock time the gateway received it (for delivery lag).
    """

    doc_id: str
    rev: str
    seq: Seq
    message: Any
    size: int
    received: float


class ChangeSink(Protocol):
    """A subscriber of shared feeds (a WebSocket connection)."""

    def feed_changes(self, feed: SharedFeed, changes: Sequence[PreparedChange]) -> None:
        """New changes on a feed this sink subscribes to."""

    def feed_state(self, feed: SharedFeed, state: str, message: Any, size: int) -> None:
        """The feed was interrupted or is live again (``message`` is prepared)."""

    def feed_failed(self, feed: SharedFeed, exc: BaseException) -> None:
        """The feed hit a permanent error (e.g. the database was deleted)."""


class _Latch:
    """Fires every waiter once with the same outcome."""

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
        self._waiters: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.done:
            if self.error is not None:
                waiter.errback(self.error)
            else:
                waiter.callback(None)
        else:
            self._waiters.append(waiter)
        return waiter

    def fire(self, error: BaseException | None = None) -> None:
        self.done, self.error = True, error
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if error is not None:
                waiter.errback(error)
            else:
                waiter.callback(None)


@dataclass(eq=False)
class SharedFeed:
    """One upstream feed and its subscribers.

    Attributes:
        id: Server-chosen id sent in every ``change`` (``feed``).
        db: The database.
        params: Filter parameters and ``include_docs``.
        subscribers: The sinks, in subscription order.
        state: ``starting``, then the upstream feed's state.
        service: The upstream feed, once started.
    """

    id: str
    db: str
    params: FeedParams
    subscribers: dict[ChangeSink, None] = field(default_factory=dict)
    state: str = "starting"
    service: ChangesFeed | None = None
    interrupted: bool = False
    started: _Latch = field(default_factory=_Latch, repr=False)
    closed: bool = False

    @property
    def key(self) -> FeedKey:
        """The hub key of this feed."""
        return (self.db, self.params)

    def position(self) -> Seq | None:
        """The seq after which every change still reaches a subscriber joining now."""
        if self.service is None:
            return None
        since: Seq = self.service.since
        return since


class FeedHub(Service):
    """Shares upstream feeds between subscribers.

    Args:
        transport: The gateway's service identity (reads every shared feed).
        prepare: Frames a serialised message once (``factory.prepareMessage``).
        clock: The reactor's clock (heartbeat watchdogs, backoff, lag).
        heartbeat_ms: Heartbeat asked of upstream feeds; a connection silent for twice
            as long is aborted and reopened.
    """

    def __init__(
        self,
        transport: CouchTransport,
        prepare: Prepare,
        clock: IReactorTime,
        *,
        heartbeat_ms: int = 10_000,
    ) -> None:
        if heartbeat_ms <= 0:
            raise ValueError("heartbeat_ms must be positive")
        self.transport = transport
        self.prepare = prepare
        self.clock = clock
        self.heartbeat = heartbeat_ms / 1000
        self._feeds: dict[FeedKey, SharedFeed] = {}
        self._ids = itertools.count(1)
        self._stopping: list[Deferred[Any]] = []
        self.feeds_opened = 0
        self.changes_received = 0

    @property
    def feeds(self) -> dict[FeedKey, SharedFeed]:
        """The open shared feeds by key (read only)."""
        return dict(self._feeds)

    def acquire(self, db: str, params: FeedParams, sink: ChangeSink) -> SharedFeed:
        """Register ``sink`` on the feed of ``(db, params)``, opening it if needed.

        Registration is immediate, so the sink sees every change the feed delivers
        from now on; :meth:`ready` waits until the feed has its starting point.
        """
        key = (db, params)
        feed = self._feeds.get(key)
        if feed is None:
            feed = SharedFeed(f"f{next(self._ids)}", db, params)
            self._feeds[key] = feed
            self.feeds_opened += 1
            starting = Deferred.fromCoroutine(self._start(feed))
            starting.addErrback(lambda failure: log.error("feed start: %s", failure.value))
        feed.subscribers[sink] = None
        return feed

    async def ready(self, feed: SharedFeed) -> None:
        """Wait until the feed follows the database from a fixed seq.

        Raises:
            CouchError: The feed could not start (it is closed; acquire again to retry).
        """
        await feed.started.wait()

    async def _start(self, feed: SharedFeed) -> None:
        try:
            body = await self.transport.request(
                "GET", [feed.db, "_changes"], params={"since": "now", "limit": 1}
            )
            since = body["last_seq"]
        except Exception as exc:
            if self._feeds.get(feed.key) is feed:
                del self._feeds[feed.key]
            feed.closed = True
            feed.started.fire(exc)
            return
        if feed.closed:
            feed.started.fire(None)
            return
        options: dict[str, Any] = dict(feed.params.changes_params())
        body_params = feed.params.changes_body()
        if body_params:
            options.update(body_params)
        service = ChangesFeed(
            self.transport, feed.db, options, since=since,
            on_changes=lambda rows, last_seq: self._on_changes(feed, rows),
            on_state=lambda state, detail: self._on_state(feed, state, detail),
            on_error=lambda exc: self._on_error(feed, exc),
            clock=self.clock, heartbeat=self.heartbeat,
            # CouchDB sends a continuous feed's headers at once: a reconnection into
            # a stalled path is given up after two heartbeats (at least 5 s), not 30 s.
            connect_timeout=max(CONNECT_TIMEOUT_MIN, 2 * self.heartbeat),
        )
        feed.service = service
        service.startService()
        feed.started.fire(None)

    async def release(self, feed: SharedFeed, sink: ChangeSink) -> None:
        """Unregister ``sink``; close the feed when it was the last subscriber."""
        feed.subscribers.pop(sink, None)
        if feed.subscribers or feed.closed:
            return
        feed.closed = True
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
        await self._stop_feed(feed)

    async def _stop_feed(self, feed: SharedFeed) -> None:
        service, feed.service = feed.service, None
        if service is not None:
            await service.stopService()

    def _on_changes(self, feed: SharedFeed, rows: list[dict[str, Any]]) -> None:
        if feed.closed:
            return
        now = self.clock.seconds()
        prepared: list[PreparedChange] = []
        for row in rows:
            if "id" not in row or "seq" not in row:
                continue
            payload = encode(change_message(feed.id, row))
            changes = row.get("changes") or [{}]
            prepared.append(PreparedChange(
                row["id"], str(changes[0].get("rev", "")), row["seq"],
                self.prepare(payload), len(payload), now,
            ))
        self.changes_received += len(prepared)
        if not prepared:
            return
        for sink in list(feed.subscribers):
            try:
                sink.feed_changes(feed, prepared)
            except Exception:
                log.exception("subscriber failed to take changes")

    def _on_state(self, feed: SharedFeed, state: str, detail: Any) -> None:
        feed.state = state
        notice: str | None = None
        if state == "interrupted" and not feed.interrupted:
            feed.interrupted, notice = True, "interrupted"
        elif state == "live" and feed.interrupted:
            feed.interrupted, notice = False, "live"
        if notice is None or feed.closed:
            return
        reason = "CouchDB is unreachable; reconnecting" if notice == "interrupted" else None
        payload = encode(feed_state_message(feed.id, notice, reason))
        message = self.prepare(payload)
        for sink in list(feed.subscribers):
            try:
                sink.feed_state(feed, notice, message, len(payload))
            except Exception:
                log.exception("subscriber failed to take a feed state")

    def _on_error(self, feed: SharedFeed, exc: BaseException) -> None:
        # The upstream feed stopped for good (database deleted, access revoked, a
        # malformed feed): forget it, so the next subscriber opens a fresh one, and
        # end every subscription on it.
        log.warning("feed %s on %s stopped: %s", feed.id, feed.db, exc)
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
        if feed.closed:
            return
        for sink in list(feed.subscribers):
            try:
                sink.feed_failed(feed, exc)
            except Exception:
                log.exception("subscriber failed to take a feed error")

    def stopService(self) -> Deferred[None]:  # noqa: N802 - Twisted's name
        """Close every shared feed."""
        super().stopService()  # type: ignore[no-untyped-call,unused-ignore]
        return Deferred.fromCoroutine(self._stop_all())

    async def _stop_all(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.closed = True
            feed.subscribers.clear()
            await self._stop_feed(feed)
