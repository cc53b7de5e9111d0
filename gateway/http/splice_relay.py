"""Zero-copy attachment transfers with splice(2): downloads and uploads.

The Python relay (:func:`gateway.http.streaming.relay`) receives every chunk of a body
into Python and sends it again. For a large body on two plain TCP connections,
:class:`Splicer` moves the bytes inside the kernel instead, in a worker thread of the
reactor's threadpool:

1. The upstream response's headers are in, and Twisted's HTTP client parser has paused
   the upstream socket. Body bytes it already read are taken from the response
   (``deliverBody``; the rest of that read may follow in the same call stack), the
   upstream socket stays paused, and the client socket stops being read.
2. ``request.write`` sends the response headers and those bytes. Once Twisted's send
   queue for the client is empty (the transport tells its producer, the channel, which
   tells the request's producer: this transfer), the worker thread starts.
3. :func:`splice_loop` moves exactly the rest of the body, on duplicates of the two
   descriptors (Twisted may close its own at any moment; a duplicate keeps the number
   from being reused under the thread). Cancelling (the client went away, shutdown)
   wakes it through an ``eventfd``; no progress for ``stall_timeout`` ends it.
4. Back on the reactor: the upstream connection is aborted (its HTTP parser never saw
   the body, so it cannot go back to the pool), the request's byte count is updated,
   and the request's Deferred fires; the caller finishes the request, which resumes
   reading the client connection (keep-alive). After a failure the client connection
   is aborted: its headers promised bytes that did not all come.

Used only when it is safe (see :meth:`Splicer.try_relay`); otherwise the caller relays
in Python. At most ``max_active`` transfers splice at once: the threadpool is shared.
This module is the Twisted side: choosing, starting, stopping and ending transfers.
The loop that moves the bytes, plain ``os`` and ``select`` calls, is
:mod:`gateway.http.splice_loop`.

Uploads go the other way, client socket → pipe → upstream socket (:meth:`Splicer.try_upload`,
called by :class:`~gateway.http.streaming.BodyPipe` once Twisted's HTTP client has written
the upstream request's headers and asks for the body):

1. The client socket is paused (since the first body bytes came, if any did). Body
   bytes Twisted already read went through the pipe into the upstream request as usual.
   Once the upstream socket's send queue is empty, the server channel hands the rest of
   the body over (:meth:`BodySource.take_body`: its parser holds nothing unparsed).
2. :func:`splice_loop` moves exactly that rest, in a worker thread, on duplicated
   descriptors; Twisted reads neither the client socket nor writes the upstream one
   meanwhile (it still reads the upstream socket: an early answer is seen).
3. Back on the reactor: the client's ``LengthEnforcingConsumer`` is told the bytes went
   out (its count of bytes still due is lowered, nothing is written twice) and the
   server channel's parser skips them (:meth:`BodySource.body_taken`): the body is
   complete as if it had been read, the request's Deferred of the body fires, the
   upstream answer is read by Twisted as usual, and keep-alive goes on, on both sides.
4. After a failure the upstream connection is aborted (a partial body must never be
   stored). If the client went away, stalled, or the gateway shuts down, the client
   connection is aborted too; otherwise (the upstream failed) the channel's parser skips
   what was taken and the rest of the body is read and dropped as for any upload whose
   upstream failed, so the client gets an error answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web._newclient import LengthEnforcingConsumer
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from gateway.couch.spill import lost_midway, silent_midway, stalled_midway
from gateway.couch.transport import body_complete
from gateway.eager_write import nothing_queued
from gateway.http.splice_loop import (
    MIN_SPLICE_BYTES,
    ClientGone,
    PeerLost,
    Progress,
    SpliceStalled,
    SpliceStopped,
    UpstreamClosed,
    available,
    splice_loop,
)

__all__ = ["BodySource", "Splicer"]


class BodySource(TypingProtocol):
    """The HTTP server side of an upload whose body may be spliced (the request)."""

    def take_body(self) -> int:
        """Body bytes still in the client socket, now left to the splice; 0 if not safe."""

    def body_taken(self, count: int) -> None:
        """``count`` of those bytes were read from the socket by the splice."""


def _download_error(failure: Failure) -> Failure:
    """A spliced download's failure as the error the Python relay gives for the same fault.

    The access log and ``wallaby_errors_total`` then name who held the transfer up: a
    client that took nothing (``client_stalled``), a silent upstream (``upstream_timeout``)
    or one that broke off (``upstream_unavailable``).
    """
    exc = failure.value
    error: Exception | None = None
    if isinstance(exc, SpliceStalled):
        error = (stalled_midway if exc.destination else silent_midway)(exc.seconds, "a download")
        error.__cause__ = exc
    elif isinstance(exc, UpstreamClosed):
        error = lost_midway(failure, "a download")
    return failure if error is None else Failure(error)  # type: ignore[no-untyped-call]


@dataclass
class _Plan:
    """What :meth:`Splicer.try_relay` found safe to splice."""

    upstream: Any  # a twisted.internet.tcp.Connection (untyped)
    client: Any
    length: int


class Splicer:
    """Chooses and runs spliced downloads; one per application.

    Args:
        reactor: The reactor (its threadpool runs the loops; its triggers stop them).
        max_active: Spliced transfers (downloads and uploads) at once; beyond,
            :meth:`try_relay` and :meth:`try_upload` decline.
        min_bytes: Smallest body spliced.
        stall_timeout: Seconds without progress before a transfer is aborted.
        shutdown_grace: Seconds a running transfer may go on once the shutdown's grace
            for requests in flight began (:meth:`start_grace`).
    """

    def __init__(
        self, reactor: Any, *, max_active: int = 4, min_bytes: int = MIN_SPLICE_BYTES,
        stall_timeout: float = 60.0, shutdown_grace: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.max_active = max_active
        self.min_bytes = min_bytes
        self.stall_timeout = stall_timeout
        self.shutdown_grace = shutdown_grace
        self.enabled = available()
        #: Transfers running now.
        self.active = 0
        #: Transfers that took the splice path, and how many of them failed.
        self.spliced = 0
        self.failed = 0
        #: Body bytes moved by ``splice(2)`` (not counting those Twisted had already read).
        self.bytes_spliced = 0
        #: The same for uploads (:meth:`try_upload`), with their own switch.
        self.uploads_enabled = self.enabled
        self.active_uploads = 0
        self.uploads = 0
        self.uploads_failed = 0
        self.upload_bytes = 0
        self._grace_started = False
        #: Set once the shutdown stopped waiting for transfers: none may start a thread.
        self.closed = False
        #: Workers whose thread runs, and who waits for there to be none.
        self._running: set[_SpliceWorker] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def start_grace(self) -> None:
        """The shutdown's grace for requests in flight begins.

        That is after the drain and the WebSockets' close: running transfers get
        ``shutdown_grace`` seconds from now, as the other requests do, not from the
        ``before shutdown`` trigger (SIGTERM); so do transfers that begin later.
        """
        self._grace_started = True
        for worker in list(self._running):
            worker.start_grace_timer()

    def idle(self) -> Deferred[None]:
        """Fires once no transfer's thread runs (at once if none does).

        After :meth:`start_grace` every running transfer has a deadline, so this is
        bounded: the shutdown waits here (``GatewayService``), and no thread is left
        for the reactor's thread pool to join when it stops.
        """
        waiter: Deferred[None] = Deferred()
        if self._running:
            self._idle_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def close(self) -> None:
        """The shutdown waits no longer: a transfer not yet spliced is not, from now on.

        Its thread would run while the reactor stops, with no deadline that can fire.
        """
        self.closed = True

    def _thread_started(self, worker: _SpliceWorker) -> None:
        self._running.add(worker)
        if self._grace_started:
            worker.start_grace_timer()

    def _thread_ended(self, worker: _SpliceWorker) -> None:
        self._running.discard(worker)
        if not self._running and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            # Next turn: the shutdown goes on once this transfer's own ending is done.
            self.reactor.callLater(0, _fire_all, waiters)

    def _busy(self) -> bool:
        return self.active + self.active_uploads >= self.max_active

    def try_relay(
        self, response: Any, request: Any, limit: int | None = None
    ) -> Deferred[int] | None:
        """Splice ``response``'s body into ``request`` if that is safe; else ``None``.

        Safe means: splice exists; no transfer slot is short; the response has a known
        ``Content-Length`` of at least :attr:`min_bytes` (after ``limit``) and arrives
        with identity transfer-encoding on a plain TCP connection whose body has not
        been delivered yet; the request has written nothing, is answered with exactly
        that ``Content-Length`` (so unchunked) on a plain TCP connection, and has no
        producer. When ``None`` is returned nothing was touched.

        Returns:
            Like :func:`gateway.http.streaming.relay`: a Deferred of the bytes relayed;
            cancelling it stops the transfer. It fails with the errors of the Python
            relay for the same faults (:class:`~gateway.errors.ClientStalled`, a
            :class:`~gateway.errors.CouchTimeout` or
            :class:`~gateway.errors.CouchUnreachable`), else with the splice's own.
        """
        plan = self._plan(response, request, limit)
        if plan is None:
            return None
        self.active += 1
        self.spliced += 1
        transfer = _Transfer(self, request, plan)
        done: Deferred[int] = Deferred(transfer.cancel)
        transfer.done = done
        done.addErrback(_download_error)
        response.deliverBody(transfer)
        transfer.begin()
        return done

    def _plan(self, response: Any, request: Any, limit: int | None) -> _Plan | None:
        if not self.enabled or self._busy():
            return None
        length = getattr(response, "length", UNKNOWN_LENGTH)
        if not isinstance(length, int):
            return None
        if limit is not None:
            length = min(length, limit)
        if length < self.min_bytes or response.headers.hasHeader(b"transfer-encoding"):
            return None
        # Twisted's client: Response._transport is a TransportProxyProducer around the
        # connection's transport; the body is undelivered while the state is INITIAL.
        upstream: Any = getattr(getattr(response, "_transport", None), "_producer", None)
        if getattr(response, "_state", None) != "INITIAL" or not _usable(upstream):
            return None
        channel = getattr(request, "channel", None)
        client: Any = getattr(channel, "transport", None)
        declared = request.responseHeaders.getRawHeaders(b"content-length")
        if (
            not _usable(client) or client.producer is not channel
            or request.startedWriting or request.finished or request._disconnected
            or request.method == b"HEAD" or request.producer is not None
            or getattr(channel, "_requestProducer", None) is not None
            or declared != [str(length).encode("ascii")]
        ):
            return None
        return _Plan(upstream, client, length)

    def try_upload(
        self, pipe: Any, source: BodySource, client: Any, consumer: Any
    ) -> _Upload | None:
        """Splice the rest of an upload's body into the upstream request if that is safe.

        Called when the upstream request asks its body producer ``pipe`` (a
        :class:`~gateway.http.streaming.BodyPipe`) for the body. Safe means: splice
        exists; a transfer slot is free; the declared length is at least
        :attr:`min_bytes`; ``consumer`` is Twisted's ``LengthEnforcingConsumer`` over a
        plain TCP connection whose producer is ``pipe``; the client connection is plain
        TCP. The transfer begins once Twisted's send queue is empty and may still
        decline then (the client socket is resumed, as if ``None`` had been returned).

        Returns:
            The transfer (``pipe`` drives it), or ``None`` with nothing touched.
        """
        if not self.uploads_enabled or self._busy() or pipe.length < self.min_bytes:
            return None
        upstream: Any = getattr(consumer, "_consumer", None)
        if (
            not isinstance(consumer, LengthEnforcingConsumer)
            or not isinstance(getattr(consumer, "_length", None), int)
            or not _usable(upstream) or upstream.producer is not pipe or not _usable(client)
        ):
            return None
        self.active_uploads += 1
        upload = _Upload(self, pipe, source, client, upstream, consumer)
        upload.begin()
        return upload

    def render_metrics(self) -> str:
        """Prometheus lines for the metrics page (a :data:`~gateway.http.metrics.Collector`)."""
        return "\n".join([
            "# HELP wallaby_spliced_downloads_total Downloads relayed with splice(2).",
            "# TYPE wallaby_spliced_downloads_total counter",
            f"wallaby_spliced_downloads_total {self.spliced}",
            "# HELP wallaby_spliced_downloads_failed_total Spliced downloads cut short.",
            "# TYPE wallaby_spliced_downloads_failed_total counter",
            f"wallaby_spliced_downloads_failed_total {self.failed}",
            "# HELP wallaby_spliced_bytes_total Body bytes moved by splice(2).",
            "# TYPE wallaby_spliced_bytes_total counter",
            f"wallaby_spliced_bytes_total {self.bytes_spliced}",
            "# HELP wallaby_spliced_downloads_active Spliced downloads running.",
            "# TYPE wallaby_spliced_downloads_active gauge",
            f"wallaby_spliced_downloads_active {self.active}",
            "# HELP wallaby_spliced_uploads_total Uploads relayed with splice(2).",
            "# TYPE wallaby_spliced_uploads_total counter",
            f"wallaby_spliced_uploads_total {self.uploads}",
            "# HELP wallaby_spliced_uploads_failed_total Spliced uploads cut short.",
            "# TYPE wallaby_spliced_uploads_failed_total counter",
            f"wallaby_spliced_uploads_failed_total {self.uploads_failed}",
            "# HELP wallaby_spliced_upload_bytes_total Upload body bytes moved by splice(2).",
            "# TYPE wallaby_spliced_upload_bytes_total counter",
            f"wallaby_spliced_upload_bytes_total {self.upload_bytes}",
            "# HELP wallaby_spliced_uploads_active Spliced uploads running.",
            "# TYPE wallaby_spliced_uploads_active gauge",
            f"wallaby_spliced_uploads_active {self.active_uploads}",
        ]) + "\n"


def _fire_all(waiters: list[Deferred[None]]) -> None:
    for waiter in waiters:
        waiter.callback(None)


def _usable(transport: Any) -> bool:
    """A plain, open TCP connection (TLS would wrap it in another transport)."""
    return (
        isinstance(transport, tcp.Connection) and bool(transport.connected)
        and not transport.disconnecting and not getattr(transport, "_aborting", False)
    )


def _failure(exc: BaseException) -> Failure:
    return Failure(exc)  # type: ignore[no-untyped-call]


class _SpliceWorker:
    """What a spliced transfer in either direction does around its worker thread.

    The thread runs :func:`splice_loop` on duplicated descriptors; an ``eventfd`` wakes
    it; the splicer gives it ``shutdown_grace`` seconds at shutdown
    (:meth:`Splicer.start_grace`; the shutdown waits in :meth:`Splicer.idle`); timers
    guard the steps before it. Subclasses set ``state`` and implement ``_end`` (every
    path ends there once) and ``_stop_for_shutdown``, and name the ends.
    """

    #: Who the source and the destination are (:func:`splice_loop`'s errors name them).
    src_peer: type[PeerLost] = UpstreamClosed
    dst_peer: type[PeerLost] = ClientGone

    def __init__(self, splicer: Splicer) -> None:
        self.splicer = splicer
        self.state = ""
        self.progress = Progress()
        self._wake: int | None = None
        self._grace_timer: Any = None
        self._timers: list[Any] = []

    def _end(self, outcome: int | Failure | None) -> None:
        raise NotImplementedError

    def _stop_for_shutdown(self) -> None:
        raise NotImplementedError

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []

    def _start_thread(self, src: Any, dst: Any, length: int) -> None:
        """Splice ``length`` bytes from transport ``src`` to transport ``dst`` in a thread.

        The descriptors are duplicated here, on the reactor thread: if Twisted closes a
        socket while the thread works, the thread's numbers still name the same sockets.
        """
        src_fd = os.dup(src.fileno())
        try:
            dst_fd = os.dup(dst.fileno())
        except OSError:
            os.close(src_fd)
            raise
        try:
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:  # out of descriptors: the duplicates must not leak
            os.close(src_fd)
            os.close(dst_fd)
            raise
        self.state = "splice"
        reactor = self.splicer.reactor
        self.splicer._thread_started(self)
        work = deferToThreadPool(
            reactor, reactor.getThreadPool(), self._work, src_fd, dst_fd, length, self._wake
        )
        work.addBoth(self._end)

    def _work(self, src: int, dst: int, length: int, wake: int) -> int:
        """Worker thread: the loop, on descriptors it owns."""
        try:
            return splice_loop(src, dst, length, wake=wake, progress=self.progress,
                               stall_timeout=self.splicer.stall_timeout,
                               src_peer=self.src_peer, dst_peer=self.dst_peer)
        finally:
            os.close(src)
            os.close(dst)

    def _wake_thread(self) -> None:
        if self._wake is not None:
            os.eventfd_write(self._wake, 1)

    def start_grace_timer(self) -> None:
        """Stop the transfer ``shutdown_grace`` seconds from now, unless it ends first."""
        if self.state == "splice" and self._grace_timer is None:
            self._grace_timer = self.splicer.reactor.callLater(
                self.splicer.shutdown_grace, self._stop_for_shutdown)
            self._timers.append(self._grace_timer)

    def _release(self) -> None:
        """What every end releases: timers, the eventfd, its place among running threads."""
        self.state = "ended"
        self._cancel_timers()
        self.splicer._thread_ended(self)
        if self._wake is not None:
            os.close(self._wake)
            self._wake = None


@implementer(IPushProducer)
class _Transfer(_SpliceWorker, Protocol):
    """One spliced download: the response's body protocol and the request's producer.

    States: ``prefix`` (taking what Twisted already read), ``flush`` (waiting for the
    headers and that prefix to leave), ``splice`` (the worker thread runs), ``ended``.
    """

    def __init__(self, splicer: Splicer, request: Any, plan: _Plan) -> None:
        super().__init__(splicer)
        self.request = request
        self.plan = plan
        self.done: Deferred[int] | None = None
        self.state = "prefix"
        self._prefix: list[bytes] = []
        self._lost: Failure | None = None
        self._relayed = 0  # bytes written through request.write
        self._upstream_done = False  # the whole body came with the headers

    # -- body protocol (the response) -----------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.state == "prefix":
            self._prefix.append(data)
        elif self.state == "flush":
            # The rest of the read that brought the headers: the response Deferred fires
            # (and this transfer begins) before the parser has handed all of it over.
            data = data[: self.plan.length - self._relayed]
            self._relayed += len(data)
            self.request.write(data)
            if self._relayed == self.plan.length:
                self._end(None)
        elif self.state != "ended":
            # The upstream socket is paused by now: bytes here mean it was not.
            self._fail(_failure(RuntimeError("upstream bytes arrived during the splice")))

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        if self.state == "prefix":
            self._lost = reason  # handled by begin()
        elif self.state == "flush":
            self._fail(reason or _failure(UpstreamClosed("the upstream body ended early")))
        elif self.state == "splice":
            self._stop_thread()  # someone closed the upstream under the thread

    # -- reactor side -------------------------------------------------------------

    def begin(self) -> None:
        """Send the headers and what was already read; splice the rest once they left."""
        plan, request = self.plan, self.request
        plan.upstream.pauseProducing()  # deliverBody resumed it
        plan.client.pauseProducing()  # the next request waits for this one (keep-alive)
        prefix = b"".join(self._prefix)[: plan.length]
        self._prefix = []
        lost, self._lost = self._lost, None
        request.registerProducer(self, True)
        self.state = "flush"
        request.write(prefix)  # the response headers, then the body bytes Twisted holds
        self._relayed = len(prefix)
        if lost is not None and not (
            body_complete(lost) and len(prefix) == plan.length
        ):
            self._fail(lost)
        elif len(prefix) == plan.length:
            self._upstream_done = lost is not None and body_complete(lost)
            self._end(None)
        else:
            # Not now: the parser may still hand over the rest of its read (dataReceived).
            reactor = self.splicer.reactor
            self._timers += [
                reactor.callLater(0, self._launch_when_flushed),
                reactor.callLater(self.splicer.stall_timeout, self._flush_stalled),
            ]

    def _launch_when_flushed(self) -> None:
        if self.state != "flush":
            return
        if nothing_queued(self.plan.client):
            self._launch()
        else:
            # Be told when the queue is empty: the transport resumes its producer (the
            # channel) then, which resumes the request's producer (resumeProducing).
            self.plan.client.producerPaused = True

    def resumeProducing(self) -> None:  # noqa: N802
        """The client's send queue is empty."""
        self._launch_when_flushed()

    def pauseProducing(self) -> None:  # noqa: N802
        """Nothing to pause: Twisted only sends the headers and the prefix."""

    def stopProducing(self) -> None:  # noqa: N802
        """The client connection is going away."""
        self._fail(_failure(ClientGone("the client connection was lost")))

    def cancel(self, _: Deferred[int]) -> None:
        """The caller gave up (the client went away): stop, clean up, let it errback."""
        self.done = None  # the Deferred errbacks with CancelledError by itself
        self._fail(_failure(SpliceStopped("cancelled")))

    def _flush_stalled(self) -> None:
        if self.state == "flush":
            self._fail(_failure(SpliceStalled(
                "the client did not take the response headers",
                seconds=self.splicer.stall_timeout, destination=True)))

    def _launch(self) -> None:
        self._cancel_timers()
        plan = self.plan
        if not (_usable(plan.client) and _usable(plan.upstream)):
            self._fail(_failure(ClientGone("a connection closed before the splice")))
            return
        if self.splicer.closed:
            self._fail(_failure(SpliceStopped("the gateway shut down before the transfer")))
            return
        self._start_thread(plan.upstream, plan.client, plan.length - self._relayed)

    def _stop_thread(self) -> None:
        if self.state == "splice":
            self._wake_thread()

    def _stop_for_shutdown(self) -> None:
        self._stop_thread()

    def _fail(self, reason: Failure) -> None:
        if self.state == "splice":
            self._stop_thread()  # _end runs once the thread is out
        elif self.state != "ended":
            self._end(reason)

    def _end(self, outcome: int | Failure | None) -> None:
        """Every path ends here once, on the reactor thread, with no thread running."""
        if self.state == "ended":
            return
        self._release()
        plan, request, splicer = self.plan, self.request, self.splicer
        splicer.active -= 1
        splicer.bytes_spliced += self.progress.sent
        if not self._upstream_done:
            # The upstream parser never saw the spliced bytes: this connection is done.
            plan.upstream.abortConnection()
        request.sentLength += self.progress.sent
        if request.producer is self:
            if request.channel is not None:
                request.unregisterProducer()
            else:  # the client connection is gone (Request.connectionLost)
                request.producer = None
        done, self.done = self.done, None
        if isinstance(outcome, Failure):
            splicer.failed += 1
            # The headers promised bytes that did not all come: cut the response short.
            plan.client.abortConnection()
            if done is not None:
                done.errback(outcome)
        elif done is not None:
            done.callback(self._relayed + self.progress.sent)


class _Upload(_SpliceWorker):
    """One spliced upload body, driven by its :class:`~gateway.http.streaming.BodyPipe`.

    States: ``flush`` (Twisted still holds bytes for the upstream), ``splice`` (the
    worker thread runs), ``ended``.
    """

    src_peer = ClientGone
    dst_peer = UpstreamClosed

    def __init__(
        self, splicer: Splicer, pipe: Any, source: BodySource, client: Any, upstream: Any,
        encoder: Any,
    ) -> None:
        super().__init__(splicer)
        self.pipe = pipe
        self.source = source
        self.client = client
        self.upstream = upstream
        self.encoder = encoder
        self.state = "flush"
        self._taken = False  # the channel handed the rest of the body over
        self._keep_client = True  # False: the client connection is aborted at the end

    def begin(self) -> None:
        """Launch once the request headers and the bytes written so far have left."""
        reactor = self.splicer.reactor
        # Not now: the channel may still be parsing the read that brought the headers.
        self._timers = [
            reactor.callLater(0, self.flushed),
            reactor.callLater(self.splicer.stall_timeout, self._flush_stalled),
        ]

    def flushed(self) -> None:
        """Launch if the upstream send queue is empty, else be told when it is."""
        if self.state != "flush":
            return
        if not nothing_queued(self.upstream):
            # The transport resumes its producer (the pipe) once its queue is empty.
            self.upstream.producerPaused = True
            return
        self._cancel_timers()
        remaining = self.source.take_body()
        self._taken = remaining > 0
        # Every byte the channel parsed went into the upstream request already: what is
        # left in the socket is exactly what the upstream request still expects.
        if (
            not self._taken or remaining != self.encoder._length
            or not (_usable(self.client) and _usable(self.upstream)) or self.splicer.closed
        ):
            self._end(None)
            return
        self.client.pauseProducing()  # it is paused already: Twisted must not read it now
        self.splicer.uploads += 1
        self._start_thread(self.client, self.upstream, remaining)

    def stop(self, *, keep_client: bool = True) -> bool:
        """Stop the transfer.

        Args:
            keep_client: Whether the client connection may go on (else it is aborted).

        Returns:
            ``True`` if the worker thread runs: it ends by itself and cleans up. ``False``
            if nothing ran: the pipe carries on as if there had been no splice.
        """
        if self.state == "splice":
            self._keep_client = self._keep_client and keep_client
            self._wake_thread()
            return True
        if self.state == "flush":
            self._cleanup()
        return False

    def _flush_stalled(self) -> None:
        if self.state == "flush":
            self._keep_client = False
            self._end(_failure(SpliceStalled(
                "the upstream did not take the request headers",
                seconds=self.splicer.stall_timeout, destination=True)))

    def _stop_for_shutdown(self) -> None:
        self.stop(keep_client=False)

    def _cleanup(self) -> None:
        self._release()
        self.splicer.active_uploads -= 1

    def _end(self, outcome: int | Failure | None) -> None:
        """Every path ends here once, on the reactor thread, with no thread running.

        ``None``: declined before the thread started; the pipe goes on in Python.
        """
        if self.state == "ended":
            return
        self._cleanup()
        pipe, client = self.pipe, self.client
        if outcome is None:
            if self._taken:
                self.source.body_taken(0)
            if not (pipe.stopped or pipe.complete):
                client.resumeProducing()
            return
        self.splicer.upload_bytes += self.progress.sent
        if isinstance(outcome, int) and self._keep_client:
            # The bytes went out past the LengthEnforcingConsumer: lower its count of
            # bytes still due, so the end of the body checks out (nothing is written).
            self.encoder._length -= outcome
            self.source.body_taken(outcome)  # the body is complete: the pipe ends
            client.resumeProducing()
            return
        self.splicer.uploads_failed += 1
        # The client went away (its socket ended or was reset), stalled, or must go.
        abort_client = not self._keep_client or (
            isinstance(outcome, Failure)
            and outcome.check(ClientGone, SpliceStalled) is not None  # type: ignore[no-untyped-call]
        )
        if self._taken and not abort_client:
            self.source.body_taken(self.progress.received)  # the channel reads the rest
        if abort_client:
            # Nothing can be answered. First: its loss is then noted before the failed
            # upstream request ends the request, whose access line says aborted.
            client.abortConnection()
        # Its HTTP client is aborted too (connection lost while transmitting): the
        # upstream request fails, and CouchDB never stores a body cut short.
        self.upstream.abortConnection()
        if not abort_client and pipe.stopped:
            client.resumeProducing()  # read and drop the rest; the error answer follows
