"""The WebSocket endpoint of live changes (Autobahn on Twisted): one client connection.

:class:`ChangesServerProtocol` is one connection; the
:class:`~gateway.ws.factory.ChangesServerFactory` that builds them holds what they share
(the :class:`~gateway.ws.hub.FeedHub`, settings, metrics, per-credential transports
and re-checks).

Per connection: handshake authentication (the REST API's identities, checked by the
same code) and Origin check; every client message validated against its schema; at most
``ws_max_subscriptions`` subscriptions; messages beyond ``ws_max_message_bytes`` close
the connection with 1009; a bounded send queue (``ws_queue_bytes``, coalescing to the
newest change per document while the socket is backed up) whose overflow closes the
connection with 4008 and the seqs to resume from; keep-alive pings; a periodic
re-check (``ws_auth_recheck``) that ends subscriptions the user may no longer read.

Connections presenting the same credential (keyed by its hash, see
:mod:`gateway.ws.access`) share one upstream transport, and the access re-check runs
once per (credential, database) pair, its outcome fanned out to every connection of
the pair, instead of once per connection.
"""
from __future__ import annotations

import functools
import socket
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from gateway.couch.transport import CouchTransport
from gateway.eager_write import idle_socket, write_now
from gateway.errors import CouchError, NotFound
from gateway.ws.catchup import Join, Verdict
from gateway.ws.handshake import admit
from gateway.ws.hub import ChangeBatch, PreparedChange, SharedFeed
from gateway.ws.outbox import Outbox, Outgoing, joined_runs
from gateway.ws.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SESSION_INVALID,
    CLOSE_SLOW_CONSUMER,
    Ping,
    ProtocolError,
    Seq,
    Subscribe,
    Unsubscribe,
    closing_message,
    encode,
    error_message,
    exception_message,
    parse_client_message,
    pong_message,
    subscribed_message,
    unsubscribed_message,
)
from gateway.ws.resource import as_connection_deny, malformed_handshake, refusal_response
from gateway.ws.resume import catch_up, settle, still_current
from gateway.ws.subscription import Subscription
from gateway.ws.tasks import hold_task

if TYPE_CHECKING:
    from gateway.ws.factory import ChangesServerFactory

__all__ = ["ChangesServerProtocol"]

#: Consecutive invalid messages after which a connection is closed with 1008.
MAX_INVALID_STREAK = 20
#: Seconds a close handshake, or the flush of a closing socket, may take.
CLOSE_HANDSHAKE_SECONDS = 2.0


def _upgraded() -> Failure:
    """How an upgraded HTTP request ends: its connection is now a WebSocket's."""
    return Failure(ConnectionDone("the HTTP request was upgraded to a WebSocket"))  # type: ignore[no-untyped-call]


class ChangesServerProtocol(WebSocketServerProtocol):  # type: ignore[misc,unused-ignore]
    """One client connection (see the module documentation)."""

    factory: ChangesServerFactory

    #: Autobahn copies its options from the factory in ``_connectionMade``, and also
    #: pretty-prints all 40 of them for a debug line, logged or not: a third of the CPU
    #: of a handshake. This connection copies them itself (``_connectionMade``) and
    #: leaves Autobahn none to copy or print.
    CONFIG_ATTRS: list[str] = []
    _OPTIONS: tuple[str, ...] = tuple(WebSocketServerProtocol.CONFIG_ATTRS)

    def __init__(self) -> None:
        super().__init__()
        self.identity: Any = None
        self.user_transport: CouchTransport | None = None
        self.subs: dict[str, Subscription] = {}
        self.by_feed: dict[SharedFeed, Subscription] = {}
        #: Messages waiting for the socket (see gateway.ws.outbox).
        self.outbox = Outbox()
        self._paused = False
        self._pong_due: bytes | None = None  # the last ping, answered once writes resume
        self._open = False
        self._ending = False
        self._invalid_streak = 0
        self._pending: set[Deferred[Any]] = set()
        #: Hash of the handshake's credential (never the credential itself).
        self.credential: str | None = None
        self._shares_identity = False
        self._watched: set[str] = set()
        self._lost: Deferred[None] = Deferred()
        self._drop_deadline: IDelayedCall | None = None
        #: The HTTP request that asked for the upgrade, when served through Twisted Web
        #: (set by ``UpgradingResource``); ended once the handshake is decided.
        self.upgrade_request: Any = None
        #: The status the access log records for the upgrade request.
        self.handshake_status = 400
        #: The HTTP request being upgraded, whose headers a refusal answers with (the
        #: factory's ``upgrading`` one while ``UpgradingResource`` hands the socket over).
        self.handshake_request: Any = None
        #: Why the handshake checks refused this connection (see :meth:`failHandshake`).
        self._refusal: BaseException | None = None

    def _connectionMade(self) -> None:  # noqa: N802 - Autobahn's name
        """Take the factory's options (see ``CONFIG_ATTRS``), then Autobahn's set-up."""
        factory = self.factory
        for name in self._OPTIONS:
            if not hasattr(self, name):
                setattr(self, name, getattr(factory, name))
        self.handshake_request = factory.upgrading
        super()._connectionMade()

    # -- handshake ---------------------------------------------------------------

    def onConnect(self, request: Any) -> Deferred[None]:  # type: ignore[override]  # noqa: N802
        """Check the Origin and the credentials before accepting."""
        return Deferred.fromCoroutine(self._handshake(request)).addErrback(self._refused)

    def _refused(self, failure: Failure) -> Failure:
        """Keep why the checks refused for :meth:`failHandshake`.

        Autobahn gets a ``ConnectionDeny``, an unexpected exception is logged and
        refused as an opaque 500 (:func:`~gateway.ws.resource.as_connection_deny`).
        The traceback is dropped: it holds this connection (in the frame of
        :meth:`_handshake`) and, through the frames that threw the exception in, the
        failure itself, a cycle only the cycle collector would free.
        """
        raised = failure.value
        exc, denial = as_connection_deny(failure)
        failure.cleanFailure()  # type: ignore[no-untyped-call,unused-ignore]
        # (by hand as well: pytest-twisted makes cleanFailure keep the traceback)
        failure.tb = None
        if raised is not None:
            raised.__traceback__ = None
        self._refusal = exc
        return denial

    def failHandshake(  # noqa: N802 - Autobahn's name
        self, reason: str, code: int = 400, responseHeaders: Any = None  # noqa: N803
    ) -> None:
        """Refuse the handshake as the REST API refuses a request, then close.

        Instead of Autobahn's bare status line: the error envelope, ``Content-Type``,
        the front door's headers (``X-Request-Id``, CORS) and the error's (``Retry-After``)
        (:func:`~gateway.ws.resource.refusal_response`). The error is the one the checks
        of :func:`~gateway.ws.handshake.admit` raised, or, for a handshake Autobahn finds
        malformed, a ``bad_request`` (:func:`~gateway.ws.resource.malformed_handshake`).
        """
        exc, self._refusal = self._refusal, None
        if exc is None:
            exc = malformed_handshake(code, reason)
        self.wasNotCleanReason = reason
        request = self.upgrade_request or self.handshake_request
        path = str(getattr(self, "http_request_path", "") or "").encode("latin-1", "replace")
        self.handshake_status, response = refusal_response(
            request, exc, list(responseHeaders or ()), path=path)
        self.sendData(response)
        self.dropConnection(abort=False)

    async def _handshake(self, request: Any) -> None:
        factory = self.factory
        self.identity, self.credential = await admit(
            request, settings=factory.settings, authenticate=factory.authenticate,
            metrics=factory.metrics, accepting=factory.accepting, client=self._client())

    def _client(self) -> str:
        """The client as the REST API's limits count it (its front door's key).

        Without Twisted Web in front (a factory on a port of its own), the peer's.
        """
        request = self.upgrade_request or self.handshake_request
        if request is not None and getattr(request, "client_key", None):
            return str(request.client_key)
        peer = getattr(self.transport, "getPeer", lambda: None)()
        return str(getattr(peer, "host", None) or "unknown")

    def onOpen(self) -> None:  # noqa: N802 - Autobahn's name
        """Start flow control; share the caller's upstream transport."""
        self._open = True
        self.handshake_status = 101
        self._end_upgrade_request(_upgraded())
        factory = self.factory
        factory.connections.add(self)
        factory.metrics.connections += 1
        factory.metrics.connections_total += 1
        assert self.credential is not None
        self.user_transport = factory.identities.acquire(self.credential, self.identity.auth)
        self._shares_identity = True
        self._register_producer()
        if not factory.accepting:
            # Its handshake was checked before the shutdown began and finished after
            # the shutdown listed the connections to close: close it like them.
            self.end(CLOSE_GOING_AWAY, "server shutting down")

    def _register_producer(self) -> None:
        transport: Any = self.transport
        try:
            transport.registerProducer(self, True)
        except RuntimeError:
            # Served through twisted.web: the HTTP channel was the producer.
            transport.unregisterProducer()
            transport.registerProducer(self, True)
        if self.factory.socket_send_buffer:
            handle = getattr(transport, "getHandle", lambda: None)()
            if handle is not None:
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                  self.factory.socket_send_buffer)

    # -- flow control (IPushProducer of the socket) --------------------------------

    def onPing(self, payload: bytes) -> None:  # noqa: N802 - Autobahn's name
        """Answer a ping frame; while the socket is backed up, only the latest, later.

        Autobahn writes a pong for every ping, outside the send queue and its budget: a
        client sending pings and reading nothing grew the gateway by what it sent. RFC
        6455 (5.5.3) lets an endpoint answer only the most recent ping.
        """
        if self._paused:
            self._pong_due = payload
            return
        super().onPing(payload)

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        """The socket is backed up: queue instead of writing."""
        self._leave_direct_rosters()
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        """The socket drained: answer the last ping held, write queued messages."""
        self._paused = False
        pong, self._pong_due = self._pong_due, None
        if pong is not None and self.state == self.STATE_OPEN:
            self.sendPong(pong)  # type: ignore[no-untyped-call,unused-ignore]
        self._drain()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        """The connection is going away."""
        self._leave_direct_rosters()
        self._paused = True

    # -- the hub's roster of direct sockets (see ChangeSink) ----------------------------
    # The hub sends a broadcast's frame straight to the sockets on a feed's roster,
    # without asking (FeedHub._fan_out). Whatever could change the answer of
    # direct_socket, or put bytes in the socket before the hub's next frame, takes this
    # connection off its feeds' rosters first: every write (ours and Autobahn's, all of
    # which go through sendData), every byte received (client messages, pings, closes),
    # flow control, dropping the connection, losing it, and ending or dropping a
    # subscription.

    def _leave_direct_rosters(self) -> None:
        for feed in self.by_feed:
            feed.forget_direct(self)

    def sendData(  # noqa: N802 - Autobahn's name
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """Autobahn's every write; the hub asks before writing to this socket again."""
        self._leave_direct_rosters()
        super().sendData(data, sync, chopsize)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        """Bytes from the client; the hub asks before writing to this socket again."""
        self._leave_direct_rosters()
        super().dataReceived(data)

    def dropConnection(self, abort: bool = False) -> None:  # noqa: N802 - Autobahn's name
        """Close the TCP connection; the hub writes to this socket no more.

        A graceful drop waits for the send buffer to flush, which a client that stopped
        reading never lets happen (after a close handshake it began itself, no Autobahn
        timer runs): past the close-handshake timeout the connection is aborted.
        """
        self._leave_direct_rosters()
        if not abort and self._drop_deadline is None and self.transport is not None:
            self._drop_deadline = self.factory.clock.callLater(CLOSE_HANDSHAKE_SECONDS,
                                                               self.abort)
        super().dropConnection(abort)

    def abort(self) -> None:
        """Cut the TCP connection now, whatever the WebSocket's state.

        Autobahn's ``dropConnection`` does nothing once it counts the connection closed,
        which it does as soon as it has asked Twisted for a graceful close.
        """
        self._leave_direct_rosters()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """The connection is gone; the hub writes to this socket no more."""
        self._leave_direct_rosters()
        if self._drop_deadline is not None and self._drop_deadline.active():
            self._drop_deadline.cancel()
        self._drop_deadline = None
        super().connectionLost(reason)
        # Autobahn resolves is_closed with the protocol itself. That one reference cycle
        # would keep the whole closed connection (transport, Deferreds, validator…)
        # until a full collection of the cycle collector, which walks every live
        # connection (see gateway.gc_watch).
        if self.is_closed.called:
            self.is_closed.result = None
        self._end_upgrade_request(reason)

    def adopt_upgrade_request(self, request: Any) -> None:
        """Take the HTTP request that asked for this upgrade (``UpgradingResource``).

        It is ended once the handshake is decided, which may already be the case: a
        handshake whose credential is cached completes while the request is rendered.
        """
        self.upgrade_request = request
        if self.handshake_status == 101 or self._lost.called:
            self._end_upgrade_request(_upgraded())

    def _end_upgrade_request(self, reason: Failure) -> None:
        """End the upgrade's HTTP request: its access-log line is written, and it is freed.

        An upgraded request never finishes by itself (see gateway.ws.resource).
        """
        request, self.upgrade_request = self.upgrade_request, None
        self.handshake_request = None
        if request is not None:
            # Its access-log line names the user, as a REST line does.
            request.user_name = getattr(self.identity, "name", None)
            request.setResponseCode(self.handshake_status)
            request.connectionLost(reason)

    def _reply(self, message: Mapping[str, Any], sub: Subscription | None = None) -> None:
        """Queue a per-connection message (serialised for this client only)."""
        payload = encode(message)
        self._enqueue(Outgoing(self.factory.prepareMessage(payload), len(payload), sub), None)

    def _enqueue(self, item: Outgoing, coalesce: Hashable | None) -> None:
        if not self._open or self._ending:
            return
        if not self._paused and not self.outbox:
            self._write(item)
            return
        if self.outbox.put(item, coalesce):
            self.factory.metrics.coalesced += 1
        self._check_budget()

    def _check_budget(self) -> None:
        joins = sum(s.join.buffer_bytes for s in self.subs.values() if s.join is not None)
        if self.outbox.bytes + joins > self.factory.settings.ws_queue_bytes:
            self._close_slow()

    def _drain(self) -> None:
        while self.outbox and not self._paused and self._open and not self._ending:
            self._write(self.outbox.pop())

    def _enqueue_run(self, sub: Subscription, items: Sequence[tuple[Hashable, Outgoing]]) -> None:
        """Enqueue ``(coalescing key, item)`` pairs, in order.

        While the socket takes them directly, their frames go out joined, up to
        ``JOINED_WRITE_BYTES`` a send; the rest go through the queue.
        """
        frames = [item.message.payloadHybi for _key, item in items]
        index = 0
        for start, end in joined_runs(frames):
            if not self._takes_live_writes(sub):
                break
            self._write_frame(b"".join(frames[start:end]))
            for _key, item in items[start:end]:
                self._written(item)
            index = end
        for key, item in items[index:]:
            self._enqueue(item, key)

    def _write(self, item: Outgoing) -> None:
        self._send_prepared(item.message)
        self._written(item)

    def _written(self, item: Outgoing) -> None:
        """Count a sent item and move its subscription's resume seq past it."""
        metrics = self.factory.metrics
        metrics.messages_sent += 1
        if item.sub is not None and item.seq is not None:
            item.sub.last_seq = item.seq
        if item.received is not None:
            metrics.observe_lag(self.factory.clock.seconds() - item.received)

    def _writes_directly(self) -> bool:
        """Whether frames may bypass Autobahn's ``sendData`` (see :meth:`_send_prepared`)."""
        return (self._perMessageCompress is None and not self.send_queue
                and self.state == self.STATE_OPEN and self.transport is not None
                and not getattr(self, "logOctets", False))

    def _send_prepared(self, prepared: Any) -> None:
        """Write a prepared frame, skipping Autobahn's per-frame debug formatting.

        ``sendPreparedMessage`` → ``sendData`` builds the arguments of a ``log.debug``
        call (``hltype``/``hlval`` colouring) for every frame even with debug off: a
        quarter to a third of the fan-out CPU per delivery (BENCHMARKS.md, F1). For an
        open, uncompressed connection whose Autobahn send queue is empty (no chopped or
        synchronous writes pending, so ordering is kept) the frame goes straight to the
        transport, exactly as ``sendData`` would write it, and is sent at once when the
        socket has nothing queued (:func:`~gateway.eager_write.write_now`); otherwise
        Autobahn sends it.
        """
        if self._writes_directly():
            self._write_frame(prepared.payloadHybi)
        else:
            self.sendPreparedMessage(prepared)

    def _write_frame(self, data: bytes) -> None:
        self._leave_direct_rosters()
        write_now(self.transport, data)
        self._count_octets(len(data))

    def _count_octets(self, size: int) -> None:
        stats = self.trafficStats
        if stats is not None:
            stats.outgoingOctetsWireLevel += size

    def _deliver(self, sub: Subscription, change: PreparedChange) -> None:
        item = Outgoing(change.message, change.size, sub, change.seq, change.received)
        self._enqueue(item, ("c", id(sub), change.doc_id))

    def resume_seqs(self) -> dict[str, Seq | None]:
        """The seq of the last change written per subscription."""
        return {sub_id: sub.last_seq for sub_id, sub in self.subs.items()}

    def end(self, code: int, reason: str) -> None:
        """Close the connection after a ``closing`` message with the resume seqs."""
        if self._ending or not self._open:
            return
        self._ending = True
        self._leave_direct_rosters()
        resume = self.resume_seqs()
        self.outbox.clear()
        for sub in self.subs.values():
            if sub.join is not None:
                sub.join.buffer, sub.join.buffer_bytes = [], 0
        if self.state != self.STATE_OPEN:
            # The client began the close handshake and Autobahn answered it: nothing
            # more can be sent, and a client that stopped reading would hold the socket.
            self.abort()
            return
        self.sendMessage(  # type: ignore[no-untyped-call,unused-ignore]
            encode(closing_message(code, reason, resume))
        )
        self.factory.metrics.messages_sent += 1
        # sendClose() only accepts 1000 and 3000-4999; 1001/1008 are valid server codes.
        self.sendCloseFrame(  # type: ignore[no-untyped-call,unused-ignore]
            code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False
        )

    def _close_slow(self) -> None:
        self.factory.metrics.slow_closed += 1
        self.end(CLOSE_SLOW_CONSUMER, "slow consumer: send queue over budget")

    # -- client messages -----------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        """Validate and dispatch one client message."""
        if self._ending:
            return
        try:
            if isBinary:
                raise ProtocolError("bad_message", "binary messages are not supported")
            message = parse_client_message(payload)
        except ProtocolError as exc:
            self.factory.metrics.invalid_messages += 1
            self._invalid_streak += 1
            if exc.sub_id in self.subs:
                # An error with an id ends that subscription: a bad message that merely
                # names a live one must not look as if it had ended it.
                exc.sub_id = None
            self._reply(exc.message())
            if self._invalid_streak >= MAX_INVALID_STREAK:
                self.end(CLOSE_POLICY_VIOLATION, "too many invalid messages")
            return
        self._invalid_streak = 0
        if isinstance(message, Ping):
            self._reply(pong_message(message.data))
        elif isinstance(message, Unsubscribe):
            self._track(self._unsubscribe(message))
        else:
            self._track(self._subscribe(message))

    def _track(self, coroutine: Any) -> None:
        hold_task(self._pending, Deferred.fromCoroutine(coroutine))

    async def _subscribe(self, request: Subscribe) -> None:
        factory = self.factory
        if request.id in self.subs:
            # Without the id: the live subscription of that id carries on.
            self._reply(error_message(
                "duplicate_id", f"a subscription with the id {request.id!r} exists",
                status=409))
            return
        if len(self.subs) >= factory.settings.ws_max_subscriptions:
            self._reply(error_message(
                "too_many_subscriptions",
                f"at most {factory.settings.ws_max_subscriptions} subscriptions per connection",
                sub_id=request.id, status=429))
            return
        owner = self._owner()
        if factory.user_feeds_full(owner, request.db, request.params):
            # Before any upstream request; checked again once the feed key is known.
            self._reply(self._too_many_user_feeds(request.id))
            return
        for other in self.subs.values():
            if other.request.db == request.db and other.request.params == request.params:
                self._reply(error_message(
                    "duplicate_subscription",
                    f"subscription {other.id!r} already follows this database with these options",
                    sub_id=request.id, status=409))
                return
        sub = Subscription(request.id, request)
        self.subs[request.id] = sub
        factory.metrics.subscriptions += 1
        try:
            design_rev, checked_at = await self._authorize(request)
            if not sub.active or self._ending:
                return
            # A design filter's feed is the one of the revision the user just read (see
            # FeedParams.design_rev): joining an older one would run older code.
            params = request.params.at_revision(design_rev)
            if factory.user_feeds_full(owner, request.db, params):
                self._reply(self._too_many_user_feeds(sub.id), sub)
                await self._drop(sub)
                return
            sub.feed_key = (request.db, params)
            factory.hold_user_feed(owner, sub.feed_key)
            self._watch(request.db, checked_at)
            if request.catch_up:
                sub.join = Join()
            feed = factory.hub.acquire(request.db, params, self)
            sub.feed = feed
            self.by_feed[feed] = sub
            await factory.hub.ready(feed)
            if sub.ended():
                return
            # The seq this subscription starts after: the client's own for a catch-up,
            # else the shared feed's position now (every later change reaches this
            # subscriber), so a socket lost before the first change resumes without a gap.
            start = request.since if request.catch_up else feed.position()
            # Until a change is written, that is where it resumes (the closing message).
            sub.last_seq = start
            backlog = None
            if sub.join is not None and request.since is not None:
                # A resume from a seq the shared feed remembers: every change after it
                # is in memory, and live changes follow them with no await in between.
                backlog = feed.changes_after(request.since)
            self._reply(subscribed_message(sub.id, request.db, feed.id, start), sub)
            if feed.interruption is not None:  # joined while it is down: say so
                self._enqueue(Outgoing(*feed.interruption), None)
            if backlog is not None:
                sub.join = None
                factory.metrics.resumes_from_memory += 1
                if self._takes_live_writes(sub):
                    backlog = list(self._write_changes(sub, backlog))
                for change in backlog:
                    self._deliver(sub, change)
            elif sub.join is not None:
                await self._catch_up(sub, feed)
        except CancelledError:
            raise
        except Exception as exc:
            if sub.active:
                self._reply(exception_message(exc, sub.id), sub)
                await self._drop(sub)

    def _owner(self) -> str:
        """Whose subscriptions these are, for the per-user limit."""
        name = getattr(self.identity, "name", None)
        return f"user:{name}" if name is not None else f"credential:{self.credential}"

    def _too_many_user_feeds(self, sub_id: str) -> dict[str, Any]:
        cap = self.factory.settings.ws_max_user_feeds
        return error_message(
            "too_many_feeds", f"at most {cap} distinct feeds (database and options) per "
            "user on all connections", sub_id=sub_id, status=429)

    async def _authorize(self, request: Subscribe) -> tuple[str | None, float]:
        """Check, as the user, that the database (and its filter/view) may be read.

        Returns:
            The ``_rev`` of the design document of a design filter or ``_view`` (read
            at every subscribe, never cached), else ``None``; and when the database's
            authorization was asked upstream (it may be a cached one).
        """
        transport = self.user_transport
        assert transport is not None and self.credential is not None
        checked_at = await self.factory.authorizations.authorize(
            self.credential, request.db, transport)
        design = request.params.design_doc
        if design is None:
            return None, checked_at
        ddoc, name, kind = design
        doc = await transport.request("GET", [request.db, "_design", ddoc])
        members = doc.get(kind) if isinstance(doc, dict) else None
        if not isinstance(members, dict) or name not in members:
            singular = "filter" if kind == "filters" else "view"
            raise NotFound(f"no {singular} {name!r} in _design/{ddoc}", error="not_found")
        rev = doc.get("_rev")
        return (rev if isinstance(rev, str) else None), checked_at

    async def _catch_up(self, sub: Subscription, feed: SharedFeed) -> None:
        await catch_up(self, sub, feed)

    async def _settle(self, sub: Subscription, join: Join) -> None:
        await settle(self, sub, join)

    async def _still_current(self, sub: Subscription, change: PreparedChange) -> bool:
        return await still_current(self, sub, change)

    async def _unsubscribe(self, request: Unsubscribe) -> None:
        sub = self.subs.get(request.id)
        if sub is None:
            self._reply(error_message("not_subscribed", "no subscription with this id",
                                     sub_id=request.id, status=404))
            return
        self._reply(unsubscribed_message(sub.id))
        await self._drop(sub)

    async def _drop(self, sub: Subscription, *, linger: bool = False) -> None:
        if not sub.active:
            return
        self._leave_direct_rosters()
        sub.active = False
        sub.join = sub.trailing = None
        self._stop_trailing(sub)
        if self.subs.get(sub.id) is sub:
            del self.subs[sub.id]
            self.factory.metrics.subscriptions -= 1
        db = sub.request.db
        if db in self._watched and not any(s.request.db == db for s in self.subs.values()):
            self._unwatch(db)
        forget = None
        key, sub.feed_key = sub.feed_key, None
        if key is not None:  # it counts for its user until its feed no longer lingers for it
            forget = functools.partial(self.factory.forget_user_feed, self._owner(), key)
        feed = sub.feed
        if feed is not None:
            if self.by_feed.get(feed) is sub:
                del self.by_feed[feed]
            await self.factory.hub.release(feed, self, linger=linger, on_linger_end=forget)
        elif forget is not None:
            forget()

    # -- shared feed deliveries (ChangeSink) -----------------------------------------

    def feed_changes(self, feed: SharedFeed, changes: Sequence[PreparedChange]) -> None:
        """Send (or buffer, while catching up) changes of a shared feed."""
        sub = self.by_feed.get(feed)
        if sub is None or not sub.active or self._ending:
            return
        if sub.join is not None:
            for change in changes:
                sub.join.buffer_live(change)
            self._check_budget()
            return
        if self._takes_live_writes(sub):
            changes = self._write_changes(sub, changes)
        now = self.factory.clock.seconds() if sub.trailing is not None else 0.0
        for index, change in enumerate(changes):
            trailing = sub.trailing
            if trailing is not None and trailing.trailing(now):
                verdict = trailing.take(change)
                if verdict is Verdict.CHECK:
                    # Stale, or another branch that won: hold it and what follows
                    # while CouchDB is asked (see _settle).
                    sub.trailing, sub.join = None, trailing
                    for held in changes[index:]:
                        trailing.buffer_live(held)
                    self._track(self._settle(sub, trailing))
                    return
                if verdict is Verdict.SENT:
                    continue
            if trailing is not None and not trailing.trailing(now):
                sub.trailing = None
            self._deliver(sub, change)

    def _trail(self, sub: Subscription, join: Join) -> None:
        """Filter ``sub``'s live changes through ``join`` until its time is up.

        A live change after the window lets it go (:meth:`feed_changes`); so does its
        end, though none comes: on a quiet database the table of what the catch-up sent
        would otherwise stay as long as the subscription.
        """
        sub.trailing = join
        clock = self.factory.clock

        def look() -> None:
            sub.trailing_end = None
            if sub.trailing is not join or not sub.active:
                return
            now = clock.seconds()
            if join.trailing(now):  # the feed came back meanwhile: more time
                sub.trailing_end = clock.callLater(join.until - now, look)
            else:
                sub.trailing = None

        self._stop_trailing(sub)
        sub.trailing_end = clock.callLater(max(0.0, join.until - clock.seconds()), look)

    @staticmethod
    def _stop_trailing(sub: Subscription) -> None:
        call, sub.trailing_end = sub.trailing_end, None
        if call is not None and call.active():
            call.cancel()

    def direct_socket(self, feed: SharedFeed) -> socket.socket | None:
        """The socket to write the feed's next batch to directly, if it may be.

        It may when the subscription is live and caught up, nothing is queued before it
        (here, in Autobahn or in Twisted) and the socket is plain TCP; the hub then
        sends the batch's frame itself and calls :meth:`wrote_directly`. Otherwise
        ``None``, and the hub calls :meth:`feed_changes`.
        """
        sub = self.by_feed.get(feed)
        if sub is None or not sub.active or self._ending or sub.join is not None \
                or not self._takes_live_writes(sub):
            return None
        return idle_socket(self.transport)

    def wrote_directly(
        self, feed: SharedFeed, changes: Sequence[PreparedChange], frame: bytes, sent: int
    ) -> None:
        """Settle a batch the hub sent on :meth:`direct_socket`: ``sent`` bytes of ``frame``.

        What the socket did not take goes to the transport, behind nothing (the hub
        wrote to this socket only because nothing was queued, and nothing was written
        to it since); the hub then asks before writing to this socket again.
        """
        transport = self.transport
        if sent < len(frame) and transport is not None:
            self._leave_direct_rosters()
            transport.write(frame[sent:])
        self._count_octets(len(frame))
        self._count_written(self.by_feed[feed], changes, self.factory.clock.seconds())

    def _takes_live_writes(self, sub: Subscription) -> bool:
        """Whether live changes may skip the queue: the socket's writes are in order."""
        return sub.trailing is None and self._open and not self._paused \
            and not self.outbox and self._writes_directly()

    def _count_written(
        self, sub: Subscription, changes: Sequence[PreparedChange], now: float
    ) -> None:
        """Move the resume seq past ``changes`` and count them as delivered."""
        metrics = self.factory.metrics
        sub.last_seq = changes[-1].seq
        metrics.messages_sent += len(changes)
        for change in changes:
            metrics.observe_lag(now - change.received)

    def _write_changes(
        self, sub: Subscription, changes: Sequence[PreparedChange]
    ) -> Sequence[PreparedChange]:
        """The fan-out fast path: write changes of an idle, caught-up subscription.

        Same effect as :meth:`_deliver` for each change while the socket takes them,
        without the per-change queue item; returns the changes left once the socket
        backs up (they go through the queue, which coalesces them).
        """
        now = self.factory.clock.seconds()
        if len(changes) > 1 and isinstance(changes, ChangeBatch):
            self._write_frame(changes.frame())  # one send for the whole batch
            self._count_written(sub, changes, now)
            return ()
        # Other runs of changes (a resume's backlog from memory): their frames joined,
        # up to JOINED_WRITE_BYTES a send, until the socket backs up.
        frames = [change.message.payloadHybi for change in changes]
        for start, end in joined_runs(frames):
            if self._paused:
                return changes[start:]
            self._write_frame(b"".join(frames[start:end]))
            self._count_written(sub, changes[start:end], now)
        return ()

    def feed_state(self, feed: SharedFeed, state: str, message: Any, size: int) -> None:
        """Tell the client its feed was interrupted or resumed."""
        sub = self.by_feed.get(feed)
        if sub is None or not sub.active:
            return
        if state == "live" and sub.trailing is not None:
            # The feed was down: it may still bring rows the catch-up sent. The filter
            # gets its full time again from now.
            sub.trailing.keep_filtering(self.factory.clock.seconds())
        self._enqueue(Outgoing(message, size), None)

    def feed_failed(self, feed: SharedFeed, exc: BaseException) -> None:
        """End the subscription of a feed that cannot continue."""
        sub = self.by_feed.get(feed)
        if sub is None or not sub.active:
            return
        self._reply(exception_message(exc, sub.id))
        self._track(self._drop(sub))

    # -- access re-check -------------------------------------------------------------

    def _watch(self, db: str, checked_at: float) -> None:
        if db in self._watched or self.credential is None or self.user_transport is None:
            return
        self._watched.add(db)
        self.factory.rechecks.watch(self.credential, db, self.user_transport, self,
                                    identity=self.identity, checked_at=checked_at)

    def _unwatch(self, db: str) -> None:
        self._watched.discard(db)
        if self.credential is not None:
            self.factory.rechecks.unwatch(self.credential, db, self)

    def access_revoked(self, db: str, exc: CouchError) -> None:
        """A shared re-check was refused: end this connection's subscriptions of ``db``."""
        if self._ending:
            return
        for sub in [s for s in self.subs.values() if s.request.db == db]:
            self._forget_queued(sub)
            self._reply(error_message(
                "access_revoked", f"you may no longer read {db!r}: {exc.reason}",
                sub_id=sub.id, status=exc.status), sub)
            self._track(self._drop(sub))

    def _forget_queued(self, sub: Subscription) -> None:
        """Take what waits in the send queue for ``sub`` out of it: none of it may go now.

        A socket backed up holds changes (documents, with ``include_docs``) read while
        the user could still read them; once access is revoked they must not follow.
        """
        self.outbox.forget(sub)

    def session_ended(self) -> None:
        """The credentials behind the socket no longer authenticate: close with 4001.

        An expired session: the client logs in again and resumes from the seqs sent.
        """
        self.end(CLOSE_SESSION_INVALID, "session expired: log in and reconnect")

    # -- teardown --------------------------------------------------------------------

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        """Forget the connection: stop tasks, release its feeds."""
        was_open, self._open = self._open, False
        # A socket lost by the peer's side (not closed by either side on purpose, not
        # dropped by us, e.g. for a ping timeout): its client will likely resume, so its
        # feeds linger (and keep their recent changes) for it.
        lost = not wasClean and not self._ending and not getattr(self, "droppedByMe", False)
        self._ending = True
        for db in list(self._watched):
            self._unwatch(db)
        if self._shares_identity and self.credential is not None:
            self._shares_identity = False
            self.factory.identities.release(self.credential)
        for deferred in list(self._pending):
            deferred.cancel()
        self.outbox.clear()
        factory = self.factory
        if was_open:
            factory.connections.discard(self)
            factory.metrics.connections -= 1
        subs = list(self.subs.values())
        factory.track(Deferred.fromCoroutine(self._release_all(subs, linger=lost)))
        if not self._lost.called:
            self._lost.callback(None)

    async def _release_all(self, subs: list[Subscription], *, linger: bool = False) -> None:
        for sub in subs:
            await self._drop(sub, linger=linger)

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is closed."""
        waiter: Deferred[None] = Deferred()
        if self._lost.called:
            waiter.callback(None)
        else:
            def fire(result: object) -> object:
                waiter.callback(None)
                return result

            self._lost.addBoth(fire)
        return waiter
