"""``ChangesFeed``: one continuous ``_changes`` connection that never gives up lightly.

Construct it directly (the WebSocket fan-out does) or through
:class:`~gateway.couch.changes.subscriptions.ChangeSubscriptions`::

    feed = ChangesFeed(
        transport,                      # a CouchTransport (its reactor is the default clock)
        "todo",                         # the database
        {"filter": "_doc_ids", "doc_ids": ["a", "b"], "include_docs": True},
        since="now",                    # opaque seq, 0, or "now"
        on_changes=handle_rows,         # (rows: list[dict], last_seq) -> None | Deferred
        on_state=handle_state,          # (state, detail: str | None) -> None, optional
        on_error=handle_fatal,          # (exc: Exception) -> None, optional
        clock=reactor,                  # IReactorTime, optional
    )
    feed.startService()                 # or feed.setServiceParent(parent)
    await feed.ready()                  # the starting point is fixed
    ...
    await feed.stopService()

Options are ``_changes`` query parameters (``filter``, ``view``, ``include_docs``,
``style``, filter-function parameters …); ``doc_ids`` and ``selector`` travel in a
``POST`` body (with ``Content-Type: application/json``), as CouchDB 3 documents.

Behaviour:

* **Delivery.** ``on_changes(rows, last_seq)`` is called for each batch of rows as the
  bytes arrive (``last_seq`` is the seq of the batch's last row). If it returns a
  Deferred (or coroutine), the connection is paused until it fires, so a slow consumer
  makes the feed read no further: nothing is buffered beyond one partial line (bounded
  by ``max_line_bytes``) and a socket read. An exception from a handler is logged and
  the feed goes on.
* **Position.** The feed remembers the seq of the last row it delivered (or the
  ``last_seq`` the server ended with) and reconnects from there, so no change is lost
  or delivered twice. ``since="now"`` is fixed to the database's ``update_seq`` before
  the first connection, so changes made while a reconnection is pending are not lost.
  Seqs are opaque: they are stored and sent back, never compared. CouchDB clusters may
  replay rows after a rewind, which only a resumed connection can bring, in the rows it
  sends before it is idle: there, until its first heartbeat line, a row identical (same
  id, revisions, deletion and conflicts) to the last one delivered for its document is
  dropped (:attr:`ChangesFeed.duplicates_dropped` counts them). Otherwise nothing is
  dropped, so a change that leaves a document's visible state as it was (deleting a
  losing conflict revision) is delivered, unless it comes in that window. A filter
  that scans long for few matches can send heartbeats before a replay is over; the rest
  of the replay is then delivered again: a repeat, never a loss.
* **Dead connections.** The feed asks for ``heartbeat``; when no byte at all arrives for
  twice ``heartbeat`` the connection is aborted and reopened.
* **Reconnection.** After a lost connection, an unreachable or failing (5xx) server, an
  error line or the end of the feed, the feed reconnects after an exponential backoff
  with jitter (:class:`~gateway.couch.changes.backoff.Backoff`), reset once a connection
  has received data.
* **Fatal errors.** A 4xx answer other than 408/429 (the database was deleted, access was
  revoked, a filter does not exist …) cannot heal by retrying: after one credential
  renewal for a 401, the error goes to ``on_error`` and the feed stops. So does a
  :class:`~gateway.errors.FeedProtocolError` (a line too long or not JSON), which would
  recur at the same position.
* **States.** ``on_state(state, detail)`` hears every transition between
  ``"connecting"``, ``"live"``, ``"interrupted"`` (``detail`` says why, without
  credentials) and ``"stopped"``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    succeed,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.couch.changes.backoff import Backoff
from gateway.couch.changes.handlers import call_handler
from gateway.couch.changes.parser import (
    DEFAULT_MAX_LINE_BYTES,
    ChangeRow,
    ChangesParser,
    FeedEnd,
    FeedErrorLine,
    FeedEvent,
    Heartbeat,
)
from gateway.couch.idle import IdleTimeout
from gateway.couch.transport import BytesBody, abort_connection
from gateway.couch.urls import changes_query
from gateway.errors import CouchError, CouchUnreachable, FeedProtocolError, GatewayError

if TYPE_CHECKING:

    from gateway.couch.transport import CouchTransport

__all__ = [
    "BODY_OPTIONS",
    "ChangesFeed",
    "ChangesHandler",
    "ErrorHandler",
    "FeedState",
    "StateHandler",
    "changes_request",
    "is_retryable",
]

T = TypeVar("T")

FeedState = Literal["connecting", "live", "interrupted", "stopped"]
#: ``on_changes(rows, last_seq)``; may return a Deferred or coroutine to pause the feed.
ChangesHandler = Callable[[list[dict[str, Any]], Any], object]
#: ``on_state(state, detail)``.
StateHandler = Callable[[str, "str | None"], object]
#: ``on_error(exc)`` for the error that stopped the feed.
ErrorHandler = Callable[[Exception], object]

#: Options CouchDB reads from a ``POST`` body rather than the query string.
BODY_OPTIONS: Final = ("doc_ids", "selector")
#: Options the feed sets itself.
_RESERVED: Final = frozenset({"feed", "since", "heartbeat"})
_RETRYABLE_4XX: Final = frozenset({408, 429})
_RECENT_IDS: Final = 10_000

_log = Logger(namespace="gateway.couch.changes")


def changes_request(
    options: Mapping[str, Any], since: Any, heartbeat_ms: int
) -> tuple[str, dict[str, Any], bytes | None]:
    """The method, query and body of a continuous ``_changes`` request.

    Args:
        options: ``_changes`` options; ``doc_ids`` and ``selector`` go in the body.
        since: The opaque seq to start after.
        heartbeat_ms: The heartbeat interval in milliseconds.

    Returns:
        ``(method, params, body)``: ``GET`` without a body, or ``POST`` with JSON bytes.
    """
    params: dict[str, Any] = {"feed": "continuous", "heartbeat": heartbeat_ms}
    body: dict[str, Any] = {}
    for name, value in options.items():
        if name in _RESERVED or value is None:
            continue
        if name in BODY_OPTIONS:
            body[name] = value
        else:
            params[name] = value
    if "doc_ids" in body:
        params.setdefault("filter", "_doc_ids")
    if "selector" in body:
        params.setdefault("filter", "_selector")
    params = changes_query(params)
    params["since"] = since
    if not body:
        return "GET", params, None
    return "POST", params, json.dumps(body, separators=(",", ":")).encode("utf-8")


def is_retryable(exc: BaseException) -> bool:
    """Whether reconnecting can cure ``exc`` (see the module's policy)."""
    if isinstance(exc, FeedProtocolError):
        return False
    if isinstance(exc, CouchUnreachable):
        return True
    if isinstance(exc, CouchError):
        return not (400 <= exc.status < 500) or exc.status in _RETRYABLE_4XX
    return True


def _describe(error: BaseException | Failure) -> str:
    exc = error.value if isinstance(error, Failure) else error
    if isinstance(exc, GatewayError):
        return str(exc)
    reasons = getattr(exc, "reasons", None)
    if reasons:
        inner = ", ".join(type(r.value).__name__ for r in reasons)
        return f"connection to CouchDB lost ({type(exc).__name__}: {inner})"
    return f"connection to CouchDB lost ({type(exc).__name__})"


class _RecentRevisions:
    """The last delivered state of recently changed documents (bounded LRU)."""

    def __init__(self, max_ids: int = _RECENT_IDS) -> None:
        self._max = max_ids
        self._states: OrderedDict[str, str] = OrderedDict()

    def is_repeat(self, row: Mapping[str, Any]) -> bool:
        doc = row.get("doc")
        conflicts = doc.get("_conflicts") if isinstance(doc, Mapping) else None
        state = json.dumps(
            [row.get("changes"), bool(row.get("deleted")), conflicts],
            sort_keys=True,
            separators=(",", ":"),
        )
        doc_id = row["id"]
        repeat = self._states.get(doc_id) == state
        self._states[doc_id] = state
        self._states.move_to_end(doc_id)
        while len(self._states) > self._max:
            self._states.popitem(last=False)
        return repeat


class _FeedConnection(Protocol):
    """Streams one response body into the parser; watches for silence; pauses on demand."""

    def __init__(
        self,
        parser: ChangesParser,
        clock: IReactorTime,
        idle_timeout: float,
        on_events: Callable[[_FeedConnection, list[FeedEvent]], Deferred[None] | None],
    ) -> None:
        self.parser = parser
        self.finished: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.error: Exception | None = None
        self.detail: str | None = None
        self.received_bytes = 0
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._on_events = on_events
        self._watchdog: IdleTimeout | None = None
        self._backlog: list[bytes] = []
        self._waiting = False
        self._closing = False

    def connectionMade(self) -> None:  # noqa: N802
        if not self._closing:
            self._watchdog = IdleTimeout(self._clock, self._idle_timeout, self._silent)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._closing:
            return
        if self._waiting:
            self._backlog.append(data)
            return
        self._process(data)

    def _process(self, data: bytes) -> None:
        self.received_bytes += len(data)
        self._arm()
        try:
            events = self.parser.feed(data)
        except FeedProtocolError as exc:
            self.abort(error=exc)
            return
        if not events:
            return
        pending = self._on_events(self, events)
        if pending is not None and not self._closing:
            self._waiting = True
            if self._watchdog is not None:
                self._watchdog.pause()  # waiting for the handler is no silence of CouchDB
            self.transport.pauseProducing()  # type: ignore[union-attr]
            pending.addBoth(self._resume)

    def _resume(self, _: object) -> None:
        self._waiting = False
        if self._closing:
            return
        self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._watchdog is not None:
            self._watchdog.resume()
        if self._backlog:
            # One handler call for everything that arrived while it was busy (a
            # continuous feed comes one HTTP chunk, i.e. one row, per dataReceived).
            backlog, self._backlog = b"".join(self._backlog), []
            self._process(backlog)

    def _arm(self) -> None:
        if self._watchdog is not None and not self._waiting:
            self._watchdog.touch()

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    def _silent(self) -> None:
        self.abort(detail=f"no heartbeat from CouchDB for {self._idle_timeout:g} s")

    def abort(self, *, error: Exception | None = None, detail: str | None = None) -> None:
        """Drop the connection; ``error`` is fatal, ``detail`` explains a retry."""
        if self._closing:
            return
        self._closing = True
        self.error = error
        self.detail = detail
        self._disarm()
        self._backlog.clear()
        abort_connection(self.transport)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self._closing = True
        self._disarm()
        self._backlog.clear()
        if not self.finished.called:
            self.reason = reason
            self.finished.callback(None)


def _cancelled(failure: Failure) -> None:
    """Consume a cancellation (anything else is still raised, and logged)."""
    failure.trap(CancelledError)  # type: ignore[no-untyped-call]


class _Stop(Exception):
    """The feed is stopping."""


class ChangesFeed(Service):
    """One continuous ``_changes`` feed of one database, reconnecting as needed.

    Args:
        transport: How to reach CouchDB (and, by default, the clock).
        db_name: The database.
        options: ``_changes`` options (``filter``, ``view``, ``doc_ids``, ``selector``,
            ``include_docs``, ``style``, filter-function parameters …).
        since: The opaque seq to start after, ``0``, or ``"now"``.
        on_changes: Called with each batch of rows and the batch's last seq.
        on_state: Called with each state transition and a safe explanation.
        on_error: Called with the error that stopped the feed for good.
        clock: The clock for heartbeats and backoff (``transport.reactor`` by default).
        heartbeat: Seconds between the server's heartbeats; silence for twice as long
            aborts the connection.
        backoff: The reconnection delays (jitter from ``random`` by default).
        connect_timeout: Seconds to wait for the response headers (plus one heartbeat).
        max_line_bytes: The longest feed line accepted.
    """

    def __init__(
        self,
        transport: CouchTransport,
        db_name: str,
        options: Mapping[str, Any] | None = None,
        *,
        since: Any = "now",
        on_changes: ChangesHandler,
        on_state: StateHandler | None = None,
        on_error: ErrorHandler | None = None,
        clock: IReactorTime | None = None,
        heartbeat: float = 10.0,
        backoff: Backoff | None = None,
        connect_timeout: float = 30.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        self.db_name = db_name
        self.options: dict[str, Any] = dict(options or {})
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.max_line_bytes = max_line_bytes
        self.duplicates_dropped = 0
        self.connections = 0
        #: A resumed connection that has sent no heartbeat yet (it may replay rows).
        self._replaying = False
        self._transport = transport
        self._clock: IReactorTime = clock if clock is not None else transport.reactor
        self._since = since
        self._on_changes = on_changes
        self._on_state = on_state
        self._on_error = on_error
        self._backoff = backoff if backoff is not None else Backoff()
        self._recent = _RecentRevisions()
        self._state: FeedState = "stopped"
        self._validated = False
        self._advanced = False
        self._wanted = False
        self._loop: Deferred[None] | None = None
        self._pending: Deferred[Any] | None = None
        self._connection: _FeedConnection | None = None
        self._consumer: Deferred[None] | None = None
        self._ready_waiters: list[Deferred[None]] = []
        self._ready_result: Exception | bool | None = False
        self.error: Exception | None = None

    def __repr__(self) -> str:
        return f"ChangesFeed({self.db_name!r}, state={self._state!r})"

    @property
    def since(self) -> Any:
        """The seq the feed would resume after (opaque)."""
        return self._since

    @property
    def advanced(self) -> bool:
        """Whether the feed has moved past its initial ``since`` (rows or an end seen)."""
        return self._advanced

    @property
    def state(self) -> FeedState:
        """The current state."""
        return self._state

    # -- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        """Start connecting (the feed runs until :meth:`stopService` or a fatal error)."""
        super().startService()  # type: ignore[no-untyped-call]
        if self._loop is not None:
            return
        self._wanted = True
        loop = Deferred.fromCoroutine(self._run())
        self._loop = loop
        loop.addErrback(lambda f: _log.failure("changes feed crashed", f))

        def finished(_: object) -> None:
            if self._loop is loop:
                self._loop = None

        loop.addBoth(finished)

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Close the connection, cancel any pending retry, and wait for both.

        Returns:
            A Deferred that fires once the feed has stopped.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._wanted = False
        if self._pending is not None:
            self._pending.cancel()
        if self._connection is not None:
            self._connection.abort(detail="stopped")
        loop = self._loop
        if loop is None:
            return succeed(None)
        done: Deferred[None] = Deferred()

        def relay(result: T) -> T:
            done.callback(None)
            return result

        loop.addBoth(relay)
        return done

    def ready(self) -> Deferred[None]:
        """Fire once the starting point is fixed (``"now"`` resolved, access checked).

        It also fires if the first attempt fails in a way a retry may cure (the feed goes
        on retrying; a ``"now"`` is then fixed when the server answers) or when the
        feed stops first. It fails with the error that stopped the feed, if any.
        """
        if self._ready_result is not False:
            if isinstance(self._ready_result, Exception):
                return fail(self._ready_result)
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def _settle_ready(self, error: Exception | None = None) -> None:
        if self._ready_result is not False:
            return
        self._ready_result = error if error is not None else True
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            if error is not None:
                waiter.errback(error)
            else:
                waiter.callback(None)

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._wanted:
                detail = await self._attempt()
                if detail is None or not self._wanted:
                    break
                self._set_state("interrupted", detail)
                self._settle_ready()
                await self._wait(deferLater(self._clock, self._backoff.next_delay()))
        except (_Stop, CancelledError):
            pass
        finally:
            self._wanted = False
            self._connection = None
            self._settle_ready()
            self._set_state("stopped", None)

    async def _wait(self, deferred: Deferred[T]) -> T:
        if not self._wanted:
            deferred.cancel()
            deferred.addErrback(_cancelled)  # nobody waits for it: not an unhandled error
            raise _Stop()
        self._pending = deferred
        try:
            return await deferred
        except CancelledError:
            if not self._wanted:
                raise _Stop() from None
            raise
        finally:
            self._pending = None

    async def _attempt(self) -> str | None:
        """One connection; the reason to retry, or ``None`` to stop."""
        self._set_state("connecting", None)
        renewed = False
        while True:
            try:
                if not self._validated:
                    await self._validate()
                response = await self._wait(Deferred.fromCoroutine(self._open()))
                break
            except _Stop:
                raise
            except Exception as exc:
                if isinstance(exc, CouchError) and exc.status == 401 and not renewed:
                    renewed = True
                    auth = self._transport.auth
                    if auth is not None and await self._wait(
                        Deferred.fromCoroutine(auth.renew())
                    ):
                        continue
                if not is_retryable(exc):
                    self._give_up(exc)
                    return None
                return _describe(exc)
        self.connections += 1
        self._replaying = self.connections > 1
        self._set_state("live", None)
        connection = _FeedConnection(
            ChangesParser(self.max_line_bytes),
            self._clock,
            2 * self.heartbeat,
            self._handle_events,
        )
        self._connection = connection
        response.deliverBody(connection)
        await connection.finished
        self._connection = None
        if self._consumer is not None:
            # Keep batches in order: the next connection waits for the consumer.
            await self._wait(self._consumer)
        if connection.received_bytes:
            self._backoff.reset()
        if connection.error is not None:
            self._give_up(connection.error)
            return None
        if not self._wanted:
            return None
        if connection.detail is not None:
            return connection.detail
        if connection.parser.ended:
            return "CouchDB ended the feed"
        return _describe(connection.reason or ConnectionDone())

    async def _validate(self) -> None:
        info = await self._wait(
            Deferred.fromCoroutine(self._transport.request("GET", [self.db_name]))
        )
        if self._since == "now":
            if not isinstance(info, dict) or "update_seq" not in info:
                raise CouchUnreachable("CouchDB did not report the database's update_seq")
            self._since = info["update_seq"]
        self._validated = True
        self._settle_ready()

    async def _open(self) -> Any:
        method, params, body = changes_request(
            self.options, self._since, max(1, round(self.heartbeat * 1000))
        )
        return await self._transport.open_stream(
            method,
            [self.db_name, "_changes"],
            params=params,
            body=BytesBody(body) if body is not None else None,
            headers={"Content-Type": "application/json"} if body is not None else None,
            timeout=self.connect_timeout + self.heartbeat,
        )

    def _give_up(self, exc: Exception) -> None:
        self._wanted = False
        self.error = exc
        _log.warn(
            "changes feed of {db} stopped: {reason}", db=self.db_name, reason=_describe(exc)
        )
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                _log.failure("on_error handler of a changes feed failed")
        self._settle_ready(exc)

    # -- events --------------------------------------------------------------------

    def _handle_events(
        self, connection: _FeedConnection, events: list[FeedEvent]
    ) -> Deferred[None] | None:
        rows: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, ChangeRow):
                if event.seq is not None:  # null with seq_interval: keep the last real one
                    self._since = event.seq
                self._advanced = True
                repeat = self._recent.is_repeat(event.row)
                if repeat and self._replaying:
                    self.duplicates_dropped += 1
                else:
                    rows.append(event.row)
            elif isinstance(event, Heartbeat):
                self._replaying = False  # idle: what it had to send, it sent
            elif isinstance(event, FeedEnd):
                self._since = event.last_seq
                self._advanced = True
            elif isinstance(event, FeedErrorLine):
                connection.abort(detail=f"CouchDB aborted the feed: {event.error}: {event.reason}")
                break
        if not rows:
            return None
        result = call_handler(
            self._on_changes, rows, rows[-1]["seq"], what="changes handler", db=self.db_name
        )
        if result is None:
            return None
        consumer: Deferred[None] = Deferred()

        def consumed(_: object) -> None:
            if self._consumer is consumer:
                self._consumer = None
            if not consumer.called:
                consumer.callback(None)

        result.addBoth(consumed)
        self._consumer = consumer
        waiter: Deferred[None] = Deferred()
        consumer.addBoth(lambda _: waiter.callback(None))
        return waiter

    def _set_state(self, state: FeedState, detail: str | None) -> None:
        if state == self._state:
            return
        self._state = state
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:
                _log.failure("on_state handler of a changes feed failed")
