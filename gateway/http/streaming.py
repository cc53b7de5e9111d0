"""Proxying bodies without buffering them in memory.

Upload: an attachment ``PUT`` with a ``Content-Length`` is dispatched as soon as its
headers are in (:class:`~gateway.http.request.GatewayRequest`); its body flows through a
:class:`BodyPipe`, the upstream request's body producer: chunks go upstream as they
arrive, a slow upstream pauses the client's socket, and chunks that arrive before the
upstream request has started (while the caller is authenticated) are held — one read
at most, as the client's socket is paused meanwhile. Given a
:class:`~gateway.http.splice_relay.Splicer`, the rest of a large body goes from the
client socket to the upstream socket by ``splice(2)`` instead. Other bodies (chunked ones) are
spooled by Twisted to a temporary file beyond 100 kB, and :func:`upload_producer`
sends that file upstream in 1 MiB chunks with a known ``Content-Length``.

Download: :func:`relay` delivers an upstream ``IResponse`` into ``request.write`` and
registers itself as the request's streaming producer, so a slow client pauses the
upstream connection (TCP backpressure both ways) and memory stays flat. Cancelling the
returned Deferred (a client disconnect) aborts the upstream transfer. Given a
:class:`~gateway.http.splice_relay.Splicer`, a large body on two plain TCP connections
is moved by ``splice(2)`` instead, without entering the process (see that module).

Chunk size: Twisted's TCP transports read at most ``bufferSize`` (64 KiB) per
``recv``, send at most ``SEND_LIMIT`` (128 KiB) per ``send`` and pause their producer
once ``bufferSize`` bytes are buffered. At a GiB that is tens of thousands of reactor
turns, each several Python calls deep. :func:`widen` raises all three to
:data:`CHUNK` (1 MiB) on the two sockets of one transfer, for its duration only:
memory in flight stays bounded by about two chunks per direction.
"""

from __future__ import annotations

import contextlib
import errno
import re
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from gateway.couch.idle import StallWatch
from gateway.couch.spill import lost_midway, stalled_midway
from gateway.couch.transport import body_complete
from gateway.eager_write import queued_bytes, write_now
from gateway.errors import InsufficientStorage, TooManyOpenFiles
from gateway.http.splice_relay import BodySource, Splicer

__all__ = [
    "CHUNK", "BodyPipe", "ClientLeft", "SpooledBody", "client_backlog", "close_quietly",
    "narrow", "no_room", "parse_range", "relay", "spool", "upload_producer", "widen",
]

_log = Logger(namespace="gateway.http")

#: Bytes per read, per send and per producer pause while streaming a body.
CHUNK = 1 << 20


def _socket_transport(transport: Any) -> Any:
    """The TCP transport under a Twisted client body proxy (or the transport itself)."""
    inner = getattr(transport, "_producer", transport)  # _newclient.TransportProxyProducer
    return inner if hasattr(inner, "bufferSize") and hasattr(inner, "SEND_LIMIT") else None


def widen(transport: Any) -> Any:
    """Read, send and buffer :data:`CHUNK` bytes at a time on one TCP transport.

    Returns:
        The TCP transport changed (give it to :func:`narrow`), or ``None``.
    """
    raw = _socket_transport(transport)
    if raw is not None:
        raw.bufferSize = raw.SEND_LIMIT = CHUNK
    return raw


def narrow(raw: Any) -> None:
    """Undo :func:`widen` (the connection may be reused for small requests)."""
    if raw is not None:
        vars(raw).pop("bufferSize", None)
        vars(raw).pop("SEND_LIMIT", None)


def upload_producer(request: Any) -> IBodyProducer:
    """A body producer reading the (spooled) request body from its start."""
    content: Any = request.content
    content.seek(0)
    return FileBodyProducer(content, readSize=CHUNK)


class ClientLeft(CancelledError):
    """The client's connection ended or failed before its whole upload body had arrived.

    What a :class:`BodyPipe` fails with then. A cancellation, not a fault: nobody is
    left to answer, and the upstream request it cuts short is not CouchDB failing
    (:func:`gateway.couch.transport.send` keeps a body producer's cancellation one).
    """


@implementer(IBodyProducer)
class BodyPipe:
    """A request body still arriving from the client, as an upstream body producer.

    The request feeds it (:meth:`feed`, then :meth:`end` or :meth:`abort`); the
    upstream request consumes it (:meth:`startProducing`) and pauses it through the
    upstream socket, which pauses the client's socket. Once the consumer stops (the
    upstream request failed or was cancelled) the rest of the body is discarded.

    Args:
        length: The declared ``Content-Length`` (``None``: a chunked body, to spool).
        client: The client's TCP transport (paused and resumed here).
        source: The request, if the rest of its body may be spliced (see :attr:`splicer`).
        on_start: Called once when the upstream request asks for the body, before any
            of it is wanted (the moment to tell a waiting client ``100 Continue``).
    """

    def __init__(
        self, length: int | None, client: Any, source: BodySource | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.length = length
        self._on_start = on_start
        self.complete = False
        self.stopped = False
        #: Set by the handler when the upstream may get the body by ``splice(2)``
        #: (:meth:`~gateway.http.splice_relay.Splicer.try_upload`).
        self.splicer: Splicer | None = None
        self._source = source
        self._upload: Any = None  # the spliced transfer, once tried
        self._client = client
        self._consumer: Any = None
        self._held: list[bytes] = []
        self._done: Deferred[None] | None = None
        self._failure: Failure | None = None
        self._received: list[Deferred[None]] = []

    def _splice_state(self) -> str | None:
        return None if self._upload is None else str(self._upload.state)

    def feed(self, data: bytes) -> None:
        """A chunk of the body arrived."""
        if self._splice_state() == "splice":
            if data:  # Twisted read the socket the thread reads: the body is torn
                self._upload.stop(keep_client=False)
            return
        if self.stopped:
            return
        if self._consumer is None:
            self._held.append(data)
            self._client.pauseProducing()  # no more until the upstream request starts
        else:
            self._consumer.write(data)

    def when_received(self) -> Deferred[None]:
        """A Deferred firing once the whole body has arrived (never if it does not)."""
        waiter: Deferred[None] = Deferred()
        if self.complete and self._failure is None:
            waiter.callback(None)
        else:
            self._received.append(waiter)
        return waiter

    def end(self) -> None:
        """The whole body arrived."""
        self.complete = True
        waiters, self._received = self._received, []
        for waiter in waiters:
            waiter.callback(None)
        if self._done is not None and not self.stopped:
            self._finish_producing().callback(None)

    def abort(self, reason: Failure) -> None:
        """The body ends early: fail the upstream request.

        Args:
            reason: Why. The client's connection ending or failing (the request's
                ``connectionLost``) fails it as :class:`ClientLeft`.
        """
        if reason.check(ConnectionLost, ConnectionDone):  # type: ignore[no-untyped-call]
            left = ClientLeft(f"the client left before the end of the body ({reason.value})")
            left.__cause__ = reason.value
            reason = Failure(left)  # type: ignore[no-untyped-call]
        self._failure = reason
        if self._upload is not None and self._upload.stop(keep_client=False):
            # Once the thread is out the upstream connection is aborted: the request fails.
            self.stopped = True
            return
        if self._done is not None and not self.stopped:
            self._finish_producing().errback(reason)
        self.stopped = True
        self._held = []

    def discard(self) -> None:
        """Drop the rest of the body (the answer is known without it)."""
        self.stopProducing()

    def failure(self) -> Failure | None:
        """What ended the body early (the client left, the consumer refused), if anything."""
        return self._failure

    def refuse(self, reason: Failure) -> None:
        """The consumer cannot take the body (its spool is full): fail it, drop the rest."""
        self._failure = reason
        done = self._done
        self.stopProducing()
        if done is not None:
            done.errback(reason)

    def _finish_producing(self) -> Deferred[None]:
        done, self._done = self._done, None
        assert done is not None
        return done

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802
        """Write held and future chunks to ``consumer`` (the upstream request)."""
        if self._failure is not None:
            return fail(self._failure)
        on_start, self._on_start = self._on_start, None
        if on_start is not None:
            on_start()
        self._consumer = consumer
        held, self._held = self._held, []
        for data in held:
            consumer.write(data)
        refused = self.failure()  # the consumer may have refused what was held
        if refused is not None:
            return fail(refused)
        if self.complete:
            return succeed(None)
        self._done = Deferred(self._cancelled)
        if self.splicer is not None and self._source is not None:
            self._upload = self.splicer.try_upload(self, self._source, self._client, consumer)
            if self._upload is not None:
                self._client.pauseProducing()  # if no body came yet, it was still read
                return self._done
        self._client.resumeProducing()
        return self._done

    def _cancelled(self, _: Deferred[None]) -> None:
        self._done = None  # it errbacks with CancelledError by itself
        if self._upload is not None:
            self._upload.stop()

    def pauseProducing(self) -> None:  # noqa: N802
        """The upstream is slow: stop reading from the client."""
        if self._splice_state() in ("flush", "splice"):
            return
        if not self.stopped and not self.complete:
            self._client.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        """The upstream caught up (before a splice: its send queue is empty)."""
        state = self._splice_state()
        if state == "flush":
            self._upload.flushed()
        elif state != "splice" and not self.stopped and not self.complete:
            self._client.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        """No consumer any more: read and drop the rest of the body."""
        if self.stopped:
            return
        self.stopped = True
        self._held = []
        self._done = None  # never fires, like FileBodyProducer's once stopped
        if self._upload is not None and self._upload.stop():
            return  # once the thread is out the client socket is resumed
        if not self.complete:
            self._client.resumeProducing()


class _FileSink:
    """A consumer writing a pipe's body into a file; a full disk fails the pipe."""

    def __init__(self, file: Any, pipe: BodyPipe) -> None:
        self.file = file
        self.pipe = pipe

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as exc:  # ENOSPC, EDQUOT, EIO: this write runs in dataReceived
            self.pipe.refuse(Failure(exc))  # type: ignore[no-untyped-call]


class SpooledBody(FileBodyProducer):
    """A body received whole into a temporary file, produced from it with its length.

    Its owner calls :meth:`release` once the upload is over, whatever its outcome. A
    request that fails before it started producing (CouchDB unreachable) would
    otherwise keep the file open until the garbage collector finds it. Once started,
    the producer closes the file itself: at its end, or when its request stops it
    (closing it under a producer still running, after an early answer, made Twisted's
    client log a failed read of a closed file).
    """

    def __init__(self, file: Any) -> None:
        super().__init__(file, readSize=CHUNK)  # type: ignore[no-untyped-call]
        self._file = file
        self.started = False

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802
        """Produce the file into ``consumer`` (see ``FileBodyProducer``)."""
        self.started = True
        started: Deferred[None] = super().startProducing(consumer)  # type: ignore[no-untyped-call]
        return started

    def release(self) -> None:
        """Close (and so delete) the temporary file, unless producing has it."""
        if not self.started:
            self._file.close()


async def spool(pipe: BodyPipe) -> SpooledBody:
    """Receive a pipe's whole body into a temporary file; a producer re-reading it.

    For upstreams that must not see an upload cut short, and for chunked bodies (see
    ``put_attachment``). Raises what ended the body early (:class:`ClientLeft`: the
    client went away, nobody to answer).
    """
    try:
        file: Any = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the producer
        try:
            await pipe.startProducing(_FileSink(file, pipe))
            file.seek(0)  # flushes what is buffered: may find the disk full too
        except BaseException:
            close_quietly(file)  # the body ended early: nothing will read the partial spool
            raise
    except OSError as exc:
        pipe.discard()
        raise no_room(exc) from exc
    return SpooledBody(file)


def no_room(exc: OSError) -> InsufficientStorage | TooManyOpenFiles:
    """The error answering a body that could not be spooled, logged for the operator.

    Out of file descriptors is the gateway's own passing shortage (503), not a full
    disk (507). ``tempfile.gettempdir()`` is not asked: the first time, it needs a
    descriptor itself.
    """
    directory = tempfile.tempdir or "the temporary directory"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        _log.warn("cannot hold a request body in {directory}: too many open files",
                  directory=directory)
        return TooManyOpenFiles("the gateway has too many open files to receive this "
                                "body; try again shortly")
    _log.error("cannot hold a request body in {directory}: {error}",
               directory=directory, error=exc.strerror or str(exc))
    return InsufficientStorage("the gateway has no room left to receive this body; "
                               "try again later")


def close_quietly(file: Any) -> None:
    """Close a spool file (if any); flushing its buffer to a full disk must not raise."""
    if file is not None:
        with contextlib.suppress(OSError):  # the file is gone either way
            file.close()


@implementer(IPushProducer)
class _Relay(Protocol):
    def __init__(
        self, request: Any, done: Deferred[int], skip: int = 0, limit: int | None = None
    ) -> None:
        self.request = request
        self.done = done
        self.skip = skip
        self.limit = limit
        self.sent = 0
        self.finished = False
        self._widened: list[Any] = []
        self._client: Any = None
        self._stall: StallWatch | None = None

    def limit_stalls(self, stall: StallWatch) -> None:
        """Fail the transfer once the client holds it back and takes nothing for long."""
        self._stall = stall

    def connectionMade(self) -> None:  # noqa: N802
        client = getattr(getattr(self.request, "channel", None), "transport", None)
        self._client = client
        self._widened = [widen(self.transport), widen(client)]
        self.request.registerProducer(self, True)

    def stalled(self) -> None:
        """The client read nothing for the stall timeout: give up the transfer."""
        if self.finished:
            return
        self.finish()
        assert self._stall is not None
        self.done.errback(stalled_midway(self._stall.seconds, "a download"))

    def _write(self, data: bytes) -> None:
        request = self.request
        if request.startedWriting and not request.chunked and self._client is not None:
            # Headers are out and the body has a Content-Length: the bytes go to the
            # socket as they are, at once when it has nothing queued. Through
            # request.write they would wait in Twisted's buffer, where two chunks are
            # joined (a copy of up to 2 MiB) before a partial send and joined again.
            request.sentLength += len(data)
            write_now(self._client, data)
        else:
            request.write(data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.finished:
            return
        if not self.skip and self.limit is None:  # the common case: relay as is
            self.sent += len(data)
            self._write(data)
            return
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
        if self.limit is not None:
            data = data[: self.limit - self.sent]
        if data:
            self.sent += len(data)
            self._write(data)
        if self.limit is not None and self.sent >= self.limit:
            # The range is complete: stop reading the rest of the upstream body.
            self.finish()
            self.done.callback(self.sent)

    def _release(self) -> None:
        """Done relaying: unregister from the request and restore the sockets."""
        self.finished = True
        if self._stall is not None:
            self._stall.stop()
        # The client may be gone already (its channel is then None, like the splice's).
        if getattr(self.request, "channel", None) is not None:
            self.request.unregisterProducer()
        for raw in self._widened:
            narrow(raw)

    def finish(self) -> None:
        """Stop relaying: unregister, restore the sockets, abort the upstream body."""
        self._release()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:  # noqa: N802
        if self._stall is not None:
            self._stall.hold()
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:  # noqa: N802
        if self._stall is not None:
            self._stall.release()
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:  # noqa: N802
        if self.transport is not None and not self.finished:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self.finished:
            return
        self._release()
        if reason is None or body_complete(reason):
            self.done.callback(self.sent)
        else:
            self.done.errback(lost_midway(reason, "a download"))


def client_backlog(request: Any) -> Callable[[], int | None]:
    """How many bytes of ``request``'s answer wait in the gateway to be sent, when asked.

    A client that takes some of them is slow, not stalled (see
    :class:`~gateway.couch.idle.StallWatch`).
    """

    def backlog() -> int | None:
        return queued_bytes(getattr(getattr(request, "channel", None), "transport", None))

    return backlog


def relay(
    response: Any, request: Any, skip: int = 0, limit: int | None = None,
    splicer: Splicer | None = None, *, clock: IReactorTime | None = None,
    stall_timeout: float | None = None,
) -> Deferred[int]:
    """Stream ``response``'s body into ``request`` with backpressure.

    Args:
        response: The unread upstream response.
        request: Where the bytes go.
        skip: Bytes to drop first (a byte range the upstream did not honour).
        limit: Bytes to relay at most; the upstream body is aborted after them.
        splicer: Splices the body instead when that is possible and safe
            (:meth:`~gateway.http.splice_relay.Splicer.try_relay`, which has its own
            stall timeout).
        clock: With ``stall_timeout``: the clock.
        stall_timeout: Seconds the client may hold the transfer back while taking
            nothing before it fails with :class:`~gateway.errors.ClientStalled` and the
            upstream body is aborted (:class:`~gateway.couch.idle.StallWatch`); ``None``:
            no limit.

    Returns:
        A Deferred firing with the number of bytes relayed; cancelling it aborts the
        upstream body.
    """
    if splicer is not None and skip == 0:
        spliced = splicer.try_relay(response, request, limit)
        if spliced is not None:
            return spliced
    protocol: _Relay | None = None

    def cancel(_: Deferred[int]) -> None:
        if protocol is not None and not protocol.finished:
            protocol.finish()

    done: Deferred[int] = Deferred(cancel)
    protocol = _Relay(request, done, skip, limit)
    if clock is not None and stall_timeout is not None:
        protocol.limit_stalls(
            StallWatch(clock, stall_timeout, protocol.stalled, client_backlog(request))
        )
    response.deliverBody(protocol)
    return done


#: RFC 9110 ``1*DIGIT``.
_DIGITS = re.compile(r"[0-9]+")


def parse_range(header: str, total: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range against a known total length.

    Returns:
        ``(first, last)`` inclusive, or ``None`` when the header is not a single byte
        range the gateway serves (the full body is then sent, as RFC 9110 allows).

    Raises:
        ValueError: The range is syntactically fine but unsatisfiable (416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash or not all(_DIGITS.fullmatch(t) for t in (first_text, last_text) if t):
        return None  # not RFC 9110's digits ("+1", "1_0" and " 1" are not)
    if first_text == "":
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0:
            raise ValueError("empty suffix range")
        if total == 0:
            return None  # the whole of nothing: no Content-Range can say "0 bytes of 0"
        return max(0, total - suffix), total - 1
    first = int(first_text)
    last = int(last_text) if last_text else total - 1
    if first >= total:
        raise ValueError("range starts beyond the end")
    if last < first:
        return None
    return first, min(last, total - 1)
