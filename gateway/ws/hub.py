"""Fan-out: one upstream ``_changes`` feed per (db, filter parameters, include_docs).

A :class:`FeedHub` keeps a refcounted :class:`SharedFeed` per key. The first subscriber
opens it (from the database's current seq), the last one to leave closes it. The key of
a design filter or ``_view`` feed holds the design document's revision its subscribers
were authorised against (:attr:`~gateway.ws.protocol.FeedParams.design_rev`): CouchDB
reads the filter's code when a feed starts, so after an update new subscribers open (and
share) a feed of the new revision, while the old one keeps its subscribers until they
leave, as an open CouchDB feed would.

Every change row is serialised once and framed once (``prepare``, i.e. Autobahn's
``WebSocketServerFactory.prepareMessage``) and the same frame goes to every subscriber:
to every idle, caught-up one in one tight ``send`` loop, settled after the last send
(:meth:`FeedHub._fan_out`), to the others through their queues.

The upstream feed is a continuous :class:`~gateway.couch.changes.feed.ChangesFeed`: it
asks CouchDB for a heartbeat (``feed_heartbeat_ms``) and aborts a connection that stays
silent for twice as long, then reconnects (jittered backoff) from the last seq it
delivered, so a stalled or dead upstream is noticed within two heartbeats and nothing is
lost or repeated. Its ``interrupted``/``live`` transitions reach subscribers as
``feed_state`` messages.

The feed reads as the gateway's service identity; each subscriber is authorised as
its own user before it attaches (and re-checked periodically) by the WebSocket layer.

Each feed keeps a bounded ring of its recent changes, as received (:class:`RecentChanges`):
a resume whose ``since`` *equals* the seq of a change in the ring (or the seq the feed
started from) is served from memory, since the feed delivered every change after it;
seqs are opaque and only ever looked up by equality, never compared. When the last
subscriber of a feed is *lost* (a dropped socket, not an unsubscribe or a close), the feed
lingers for ``linger`` seconds, still following the database, so that a burst of
clients coming back after a network blip resumes from memory instead of each reading
``_changes``.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

from gateway.couch.changes.feed import ChangesFeed
from gateway.couch.transport import CouchTransport
from gateway.eager_write import send_each
from gateway.errors import Forbidden, ServiceRefused, TooManyFeeds, Unauthorized
from gateway.ws.protocol import FeedParams, Seq, change_message, encode, feed_state_message

__all__ = [
    "ChangeBatch", "ChangeSink", "FeedHub", "FeedKey", "PreparedChange", "RecentChanges",
    "SharedFeed",
]

_log = Logger(namespace="gateway.ws.hub")

#: ``(db, params)``: what makes two subscriptions share a feed (``params`` holds the
#: design document revision of a design filter, see ``FeedParams.design_rev``).
FeedKey = tuple[str, FeedParams]

#: Frames a serialised message once for many sockets (``factory.prepareMessage``).
Prepare = Callable[[bytes], Any]
#: Sends one frame on each of many sockets; how much each took
#: (:func:`gateway.eager_write.send_each`, :meth:`gateway.send_threads.SendThreads.send_each`).
SendEach = Callable[[Sequence[socket.socket], bytes], list[int]]

#: Least seconds an upstream feed waits for response headers (plus one heartbeat).
CONNECT_TIMEOUT_MIN = 5.0

#: Changes (and serialised bytes) a feed keeps for resumes served from memory.
RECENT_CHANGES = 1000
RECENT_BYTES = 2 * 1024 * 1024

#: Seconds a feed whose last subscriber was lost stays open for it to come back.
LINGER_SECONDS = 10.0

#: A fan-out taking at least this long pauses upstream reads (batching, see _on_changes).
PACING_THRESHOLD = 0.005

#: The pause, as a share of the time the fan-out took.
PACING_FACTOR = 0.5


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


class ChangeBatch(list[PreparedChange]):
    """The changes of one upstream read, in feed order, handed to every subscriber.

    Their frames are joined once (on first use) so that a subscriber that takes the
    whole batch gets it in one socket write instead of one per change.
    """

    _joined: bytes | None = None

    def joined(self) -> bytes:
        """The frames of every change, concatenated."""
        if self._joined is None:
            self._joined = b"".join(change.message.payloadHybi for change in self)
        return self._joined

    def frame(self) -> bytes:
        """What a subscriber that takes the whole batch is sent: every frame, in order."""
        return self.joined() if len(self) > 1 else self[0].message.payloadHybi


def seq_key(seq: Seq) -> str | None:
    """An equality key of an opaque seq (its canonical JSON), ``None`` if it has none."""
    try:
        return json.dumps(seq, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


class RecentChanges:
    """A bounded ring of a feed's most recent changes, in feed order.

    ``after(seq)`` answers the changes the feed delivered after ``seq`` when ``seq`` is
    the seq of a change still in the ring, or the seq just before the oldest one (the
    seq the feed started from, or of the last change dropped from the ring); ``None``
    otherwise. Seqs are looked up by equality only.

    Args:
        max_changes: Most changes kept.
        max_bytes: Most serialised bytes kept.
    """

    def __init__(self, max_changes: int = RECENT_CHANGES, max_bytes: int = RECENT_BYTES) -> None:
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        self._ring: deque[tuple[int, PreparedChange]] = deque()
        self._index: dict[str, int | None] = {}  # None: seen more than once, ambiguous
        self._copies: dict[str, int] = {}  # how often each seq is in the ring
        self._keys: dict[int, str | None] = {}
        self._next = 0
        self._bytes = 0
        self._base: str | None = None
        self._base_ambiguous = False
        self._base_set = False

    def start(self, seq: Seq) -> None:
        """The seq the feed follows from (before any change)."""
        self._base, self._base_set, self._base_ambiguous = seq_key(seq), True, False

    def __len__(self) -> int:
        return len(self._ring)

    def append(self, change: PreparedChange) -> None:
        """Remember a change the feed delivered."""
        number = self._next
        self._next += 1
        key = seq_key(change.seq)
        if key is not None:
            # A seq seen twice is ambiguous: never served from memory.
            self._index[key] = None if key in self._index or key == self._base else number
            self._copies[key] = self._copies.get(key, 0) + 1
        self._keys[number] = key
        self._ring.append((number, change))
        self._bytes += change.size
        while self._ring and (len(self._ring) > self.max_changes or self._bytes > self.max_bytes):
            old_number, old = self._ring.popleft()
            self._bytes -= old.size
            old_key = self._keys.pop(old_number)
            ambiguous = False
            if old_key is not None:
                # The last copy leaving takes its entry along (a seq seen twice once
                # stayed for ever); still ambiguous as the seq the ring follows.
                copies = self._copies.pop(old_key) - 1
                if copies:
                    self._copies[old_key] = copies
                    ambiguous = True
                else:
                    ambiguous = self._index.pop(old_key) is None
            self._base, self._base_ambiguous = old_key, ambiguous

    def after(self, seq: Seq) -> list[PreparedChange] | None:
        """The changes after ``seq``, or ``None`` when ``seq`` is not known here."""
        key = seq_key(seq)
        if key is None or not self._base_set:
            return None
        if key == self._base and key not in self._index:
            return None if self._base_ambiguous else [change for _n, change in self._ring]
        number = self._index.get(key)
        if number is None:
            return None
        first = self._ring[0][0] if self._ring else self._next
        return [change for _n, change in itertools.islice(self._ring, number - first + 1, None)]


class ChangeSink(Protocol):
    """A subscriber of shared feeds (a WebSocket connection).

    A sink whose socket took a whole direct write (:meth:`direct_socket`, then
    :meth:`wrote_directly` with all of the frame sent) stays on the feed's roster of
    direct sockets (:attr:`SharedFeed.direct`): the hub sends it later batches without
    asking again. So the sink must call :meth:`SharedFeed.forget_direct` on each of its
    feeds before anything else is written to its socket and before anything happens to
    it that would make :meth:`direct_socket` answer ``None`` (it pauses, unsubscribes,
    receives a message, closes...). It then is asked again at the next batch.
    """

    def feed_changes(self, feed: SharedFeed, changes: Sequence[PreparedChange]) -> None:
        """New changes on a feed this sink subscribes to."""

    def direct_socket(self, feed: SharedFeed) -> socket.socket | None:
        """A socket the hub may send the next batch's frame to itself, or ``None``."""

    def wrote_directly(
        self, feed: SharedFeed, changes: Sequence[PreparedChange], frame: bytes, sent: int
    ) -> None:
        """The hub sent ``sent`` bytes of ``frame`` on :meth:`direct_socket`."""

    def feed_state(self, feed: SharedFeed, state: str, message: Any, size: int) -> None:
        """The feed was interrupted or is live again (``message`` is prepared)."""

    def feed_failed(self, feed: SharedFeed, exc: BaseException) -> None:
        """The feed hit a permanent error (e.g. the database was deleted)."""


def _as_service_error(exc: BaseException, db: str) -> BaseException:
    """A shared feed's refusal is the service identity's, not the subscriber's, to fix."""
    if not isinstance(exc, (Unauthorized, Forbidden)):
        return exc
    return ServiceRefused(
        f"CouchDB refused the gateway's own identity the changes of {db!r} "
        f"({exc.status} {exc.error}): live changes are read as the service user "
        "(COUCHDB_USER, or the credentials in COUCHDB_URL), who must be able to read "
        "every database followed"
    )


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
        direct: The sinks the hub may send to without asking (see :class:`ChangeSink`),
            each with its socket.
        state: ``starting``, then the upstream feed's state.
        service: The upstream feed, once started.
    """

    id: str
    db: str
    params: FeedParams
    subscribers: dict[ChangeSink, None] = field(default_factory=dict)
    direct: dict[ChangeSink, socket.socket] = field(default_factory=dict, repr=False)
    state: str = "starting"
    service: ChangesFeed | None = None
    interrupted: bool = False
    #: The ``feed_state interrupted`` message sent (prepared, and its size) while
    #: interrupted: a subscriber joining then is told too.
    interruption: tuple[Any, int] | None = field(default=None, repr=False)
    started: _Latch = field(default_factory=_Latch, repr=False)
    closed: bool = False
    recent: RecentChanges = field(default_factory=RecentChanges, repr=False)
    linger_timer: IDelayedCall | None = field(default=None, repr=False)
    #: When the feed began to linger (reactor seconds): the oldest gives way first.
    lingering_since: float = 0.0
    #: Called once the linger ends, whichever way (taken over, closed, given way).
    linger_waiters: list[Callable[[], None]] = field(default_factory=list, repr=False)
    pacing: tuple[IDelayedCall, Deferred[None]] | None = field(default=None, repr=False)

    def end_linger(self) -> None:
        """Stop lingering (if it was): cancel the timer, tell who waited for the end."""
        timer, self.linger_timer = self.linger_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        waiters, self.linger_waiters = self.linger_waiters, []
        for waiter in waiters:
            waiter()

    def forget_direct(self, sink: ChangeSink) -> None:
        """Ask ``sink`` for its socket before the next direct write (see :class:`ChangeSink`)."""
        self.direct.pop(sink, None)

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

    def changes_after(self, since: Seq) -> list[PreparedChange] | None:
        """Every change this feed delivered after ``since``, from memory.

        ``None`` when ``since`` is neither the seq of a remembered change, nor the seq
        the remembered changes follow, nor the feed's current position (then the caller
        reads ``_changes`` upstream). Seqs are compared for equality only.
        """
        found = self.recent.after(since)
        if found is not None:
            return found
        position = self.position()
        if position is not None and seq_key(position) == seq_key(since) is not None:
            return []
        return None


class FeedHub(Service):
    """Shares upstream feeds between subscribers.

    Args:
        transport: The gateway's service identity (reads every shared feed).
        prepare: Frames a serialised message once (``factory.prepareMessage``).
        clock: The reactor's clock (heartbeat watchdogs, backoff, lag).
        heartbeat_ms: Heartbeat asked of upstream feeds; a connection silent for twice
            as long is aborted and reopened.
        linger: Seconds a feed stays open after its last subscriber was lost (0: none).
        max_feeds: Feeds with subscribers open at most (``None``: no cap); a subscription
            that needs another one is refused with :class:`~gateway.errors.TooManyFeeds`.
        send_each: The send loop of a broadcast (by default one loop on the reactor
            thread; :class:`~gateway.send_threads.SendThreads` splits it between threads).
    """

    def __init__(
        self,
        transport: CouchTransport,
        prepare: Prepare,
        clock: IReactorTime,
        *,
        heartbeat_ms: int = 10_000,
        linger: float = LINGER_SECONDS,
        max_feeds: int | None = None,
        send_each: SendEach = send_each,
    ) -> None:
        if heartbeat_ms <= 0:
            raise ValueError("heartbeat_ms must be positive")
        self.transport = transport
        self.prepare = prepare
        self.clock = clock
        self.heartbeat = heartbeat_ms / 1000
        self.linger = linger
        self.max_feeds = max_feeds
        self.send_each = send_each
        self._feeds: dict[FeedKey, SharedFeed] = {}
        self._ids = itertools.count(1)
        self.feeds_opened = 0
        self.changes_received = 0
        #: Fan-outs (one per upstream batch and feed), the seconds they took, the longest.
        self.fanouts = 0
        self.fanout_seconds = 0.0
        self.fanout_max_seconds = 0.0

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
            if self.max_feeds is not None and len(self._feeds) >= self.max_feeds \
                    and not self._evict_lingering():
                raise TooManyFeeds(
                    f"the gateway follows {self.max_feeds} upstream feeds already; share one "
                    "(the same database and options) or try later"
                )
            feed = SharedFeed(f"f{next(self._ids)}", db, params)
            self._feeds[key] = feed
            self.feeds_opened += 1
            starting = Deferred.fromCoroutine(self._start(feed))
            starting.addErrback(lambda failure: _log.failure("feed start", failure, LogLevel.error))
        elif feed.linger_timer is not None:
            feed.end_linger()  # taken over: a resume
        feed.subscribers[sink] = None
        return feed

    def _evict_lingering(self) -> bool:
        """Close the feed that has lingered longest, to make room; whether there was one.

        A lingering feed still holds its upstream connection and recent changes, so it
        counts toward :attr:`max_feeds` (a client dropping its sockets over and over must
        not hold more); it gives way to a feed with subscribers.
        """
        lingering = [feed for feed in self._feeds.values() if feed.linger_timer is not None]
        if not lingering:
            return False
        self._linger_over(min(lingering, key=lambda feed: feed.lingering_since))
        return True

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
            feed.started.fire(_as_service_error(exc, feed.db))
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
            # CouchDB sends a continuous feed's headers with its first row or heartbeat
            # line: a reconnection into a stalled path is given up after two heartbeats
            # (at least 5 s) plus one more heartbeat (the feed adds it), not 30 s.
            connect_timeout=max(CONNECT_TIMEOUT_MIN, 2 * self.heartbeat),
        )
        feed.service = service
        feed.recent.start(since)
        service.startService()
        feed.started.fire(None)

    async def release(
        self, feed: SharedFeed, sink: ChangeSink, *, linger: bool = False,
        on_linger_end: Callable[[], None] | None = None,
    ) -> None:
        """Unregister ``sink``; close the feed when it was the last subscriber.

        With ``linger`` (the subscriber was lost, it may come back), a started feed
        stays open for :attr:`linger` seconds first.

        Args:
            feed: The feed.
            sink: The subscriber leaving it.
            linger: Whether the feed may linger for the subscriber's return.
            on_linger_end: Called once the feed no longer lingers for ``sink``: at once
                if it does not linger (others follow it, or it closes), else when it is
                taken over, closes or gives way.
        """
        feed.subscribers.pop(sink, None)
        feed.forget_direct(sink)
        lingers = linger and self.linger > 0 and feed.service is not None \
            and not feed.subscribers and not feed.closed
        if on_linger_end is not None:
            if lingers:
                feed.linger_waiters.append(on_linger_end)
            else:
                on_linger_end()
        if feed.subscribers or feed.closed:
            return
        if lingers:
            if feed.linger_timer is None:
                feed.lingering_since = self.clock.seconds()
                feed.linger_timer = self.clock.callLater(self.linger, self._linger_over, feed)
            return
        await self._close(feed)

    def _linger_over(self, feed: SharedFeed) -> None:
        feed.end_linger()
        if feed.subscribers or feed.closed:
            return
        closing = Deferred.fromCoroutine(self._close(feed))
        closing.addErrback(lambda failure: _log.failure("feed close", failure, LogLevel.error))

    async def _close(self, feed: SharedFeed) -> None:
        feed.end_linger()
        feed.closed = True
        feed.direct.clear()
        self._end_pacing(feed)
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
        await self._stop_feed(feed)

    async def _stop_feed(self, feed: SharedFeed) -> None:
        service, feed.service = feed.service, None
        if service is not None:
            await service.stopService()

    def _on_changes(self, feed: SharedFeed, rows: list[dict[str, Any]]) -> Deferred[None] | None:
        """Fan a batch out; pace the upstream reads by the time it took.

        Returns:
            A Deferred while the feed should not read upstream (see below), or ``None``.
        """
        if feed.closed:
            return None
        now = self.clock.seconds()
        prepared = ChangeBatch()
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
            return None
        for change in prepared:
            feed.recent.append(change)
        self._fan_out(feed, prepared)
        took = self.clock.seconds() - now
        self.fanouts += 1
        self.fanout_seconds += took
        self.fanout_max_seconds = max(self.fanout_max_seconds, took)
        if took < PACING_THRESHOLD or feed.closed:
            return None
        # A long fan-out (thousands of sockets) stops reading upstream for a while
        # (PACING_FACTOR of the time it took). Changes arriving meanwhile wait in the
        # socket and come as one batch, written with one send per subscriber instead of
        # one per change: under load batches grow and the cost per delivery falls, and
        # the fan-out leaves the process some room for REST requests and handshakes.
        resume: Deferred[None] = Deferred()
        pause = took * PACING_FACTOR
        feed.pacing = (self.clock.callLater(pause, self._end_pacing, feed), resume)
        return resume

    def _fan_out(self, feed: SharedFeed, changes: ChangeBatch) -> None:
        """Give a batch to every subscriber, the idle ones in one tight send loop.

        A broadcast's last frame leaves when the loop reaches the last socket, so the
        loop does nothing but ``send``, and as little as possible comes before it: the
        sockets on the feed's roster (:attr:`SharedFeed.direct`) are taken as they are,
        the other subscribers are asked for a socket (those that cannot take a direct
        write get :meth:`ChangeSink.feed_changes` there and then). Every subscriber
        written to settles its accounts after the last send; those whose socket took
        the whole frame are (or stay) on the roster.
        """
        direct = feed.direct
        sinks: list[ChangeSink] = list(direct)
        sockets: list[socket.socket] = list(direct.values())
        # The roster only holds subscribers: as many means all of them (the usual case).
        others = [] if len(direct) == len(feed.subscribers) else [
            sink for sink in feed.subscribers if sink not in direct]
        for sink in others:
            try:
                sock = sink.direct_socket(feed)
                if sock is None:
                    sink.feed_changes(feed, changes)
                else:
                    sinks.append(sink)
                    sockets.append(sock)
            except Exception:
                _log.failure("subscriber failed to take changes", level=LogLevel.error)
        if not sockets:
            return
        frame = changes.frame()
        whole = len(frame)
        sent_each = self.send_each(sockets, frame)
        for sink, sock, sent in zip(sinks, sockets, sent_each, strict=True):
            try:
                sink.wrote_directly(feed, changes, frame, sent)
            except Exception:
                direct.pop(sink, None)
                _log.failure("subscriber failed to take changes", level=LogLevel.error)
                continue
            if sent == whole and sink in feed.subscribers:
                direct[sink] = sock
            else:
                direct.pop(sink, None)

    @staticmethod
    def _end_pacing(feed: SharedFeed) -> None:
        """Let the feed read upstream again (time is up, or the feed closes)."""
        pacing, feed.pacing = feed.pacing, None
        if pacing is not None:
            call, resume = pacing
            if call.active():
                call.cancel()
            resume.callback(None)

    def _on_state(self, feed: SharedFeed, state: str, detail: Any) -> None:
        feed.state = state
        notice: str | None = None
        if state == "interrupted" and not feed.interrupted:
            feed.interrupted, notice = True, "interrupted"
        elif state == "live" and feed.interrupted:
            feed.interrupted, notice = False, "live"
        if notice is None or feed.closed:
            return
        # The feed's own explanation (never credentials): unreachable, silent, or an
        # error CouchDB sent mid-feed, e.g. a filter function that throws.
        reason = (f"{detail or 'CouchDB is unreachable'}; reconnecting"
                  if notice == "interrupted" else None)
        payload = encode(feed_state_message(feed.id, notice, reason))
        message = self.prepare(payload)
        feed.interruption = (message, len(payload)) if notice == "interrupted" else None
        for sink in list(feed.subscribers):
            try:
                sink.feed_state(feed, notice, message, len(payload))
            except Exception:
                _log.failure("subscriber failed to take a feed state", level=LogLevel.error)

    def _on_error(self, feed: SharedFeed, exc: BaseException) -> None:
        # The upstream feed stopped for good (database deleted, access revoked, a
        # malformed feed): forget it, so the next subscriber opens a fresh one, and
        # end every subscription on it. (The feed has logged why it stopped.)
        exc = _as_service_error(exc, feed.db)
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
        if feed.closed:
            return
        for sink in list(feed.subscribers):
            try:
                sink.feed_failed(feed, exc)
            except Exception:
                _log.failure("subscriber failed to take a feed error", level=LogLevel.error)

    def stopService(self) -> Deferred[None]:  # noqa: N802 - Twisted's name
        """Close every shared feed."""
        super().stopService()  # type: ignore[no-untyped-call,unused-ignore]
        return Deferred.fromCoroutine(self._stop_all())

    async def _stop_all(self) -> None:
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.end_linger()
            feed.closed = True
            feed.subscribers.clear()
            feed.direct.clear()
            await self._stop_feed(feed)
