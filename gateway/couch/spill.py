"""Answers read whole up to a size, and streamed beyond it.

A JSON answer is usually small, and the gateway reads it whole: it checks that it is
JSON, tags it with an ``ETag`` made from its bytes and gzip-codes it in one piece. A
view or ``_all_docs`` of a large database can be hundreds of megabytes, which must not
sit in the gateway's memory. :func:`read_or_spill` reads a body until it is complete or
has outgrown its limit. Past the limit it pauses the upstream connection and hands back
a :class:`SpilledBody`: the bytes read so far and the rest, still unread, which
:meth:`SpilledBody.relay` streams to the client with backpressure both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from gateway.couch.idle import IdleTimeout, PausingProducer, StallWatch
from gateway.errors import ClientStalled, CouchTimeout, CouchUnreachable

__all__ = [
    "SpilledBody", "body_complete", "lost_midway", "read_or_spill", "silent_midway",
    "stalled_midway",
]


def body_complete(reason: Failure) -> bool:
    """Whether a response body's ``connectionLost`` reason means it arrived whole.

    ``ResponseDone``, or ``PotentialDataLoss`` for an answer without ``Content-Length``
    ended by its connection (complete under HTTP/1.0 framing; treq accepts it too). The
    type is tested directly: ``Failure.check`` formats the qualified name of every class
    in the reason's MRO, 4 % of the gateway's CPU per view request (BENCHMARKS.md).
    """
    return isinstance(reason.value, (ResponseDone, PotentialDataLoss))


def lost_midway(reason: Failure, what: str = "its answer") -> CouchUnreachable:
    """The error of a body that broke off after part of it was relayed (``reason``)."""
    error = CouchUnreachable(f"connection to CouchDB lost in the middle of {what}")
    error.__cause__ = reason.value
    return error


def stalled_midway(seconds: float, what: str = "an answer") -> ClientStalled:
    """The error of a client that took none of a relayed body for ``seconds``."""
    return ClientStalled(f"the client read nothing for {seconds:g} s in the middle of {what}")


def silent_midway(seconds: float, what: str = "its answer") -> CouchTimeout:
    """The error of a CouchDB that sent nothing more of a relayed body for ``seconds``."""
    return CouchTimeout(f"CouchDB sent nothing for {seconds:g} s in the middle of {what}")


def _broke_off(reason: Failure) -> Failure:
    """The answer broke off after part of it was relayed: CouchDB was lost midway."""
    return Failure(lost_midway(reason))  # type: ignore[no-untyped-call]


class _SpillingReader(Protocol):
    """Collects a body in memory; past ``limit`` bytes, pauses it and waits to relay."""

    def __init__(self, limit: int, progress: IdleTimeout | None) -> None:
        self.limit = limit
        self.progress = progress
        self.parts: list[bytes] = []
        self.size = 0
        #: Fires with the whole body, or with a :class:`SpilledBody` past the limit.
        self.outcome: Deferred[bytes | SpilledBody] = Deferred(self.cancel_transfer)
        #: Where the rest goes, once relaying (``None`` while collecting).
        self.sink: Callable[[bytes], Any] | None = None
        self.consumer: IConsumer | None = None
        self.idle: IdleTimeout | None = None
        self.received = 0
        #: Fires when the relayed rest has ended (its byte count), or broke off.
        self.relayed: Deferred[int] | None = None
        #: Why the body ended, if it did before the relay started.
        self.ended: Failure | None = None
        #: The relay is over: whatever still arrives is dropped.
        self.stopped = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.stopped:
            return  # given up (a timeout, a failed write): the rest of this read is dropped
        if self.sink is not None:
            if self.idle is not None:
                self.idle.touch()
            self.received += len(data)
            try:
                self.sink(data)
            except Exception:
                assert self.relayed is not None
                self.relayed.errback()
                self.abort()
            return
        self.parts.append(data)
        self.size += len(data)
        if self.progress is not None:
            self.progress.touch()
        if self.size > self.limit and not self.outcome.called:
            # Hold the rest in the socket, not here, until the caller relays it.
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.outcome.callback(SpilledBody(self))

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self.idle is not None:
            self.idle.stop()
        self.release_consumer()
        if not self.outcome.called:
            if body_complete(reason):
                self.outcome.callback(b"".join(self.parts))
            else:
                self.outcome.errback(reason)
            return
        if self.relayed is None:
            self.ended = reason  # before the relay started: it finishes at once
        elif not self.relayed.called and not self.stopped:
            if body_complete(reason):
                self.relayed.callback(self.received)
            else:
                self.relayed.errback(_broke_off(reason))

    def release_consumer(self) -> None:
        """Unregister from the consumer (a request), once, if it is still there."""
        consumer, self.consumer = self.consumer, None
        # A request whose client has gone has no channel left to unregister from.
        if consumer is not None and getattr(consumer, "channel", None) is not None:
            consumer.unregisterProducer()

    def abort(self) -> None:
        """Stop the transfer: the connection is closed, never pooled half read."""
        transport: Any = self.transport
        if transport is not None and self.ended is None:
            transport.stopProducing()

    def cancel_transfer(self, _: Deferred[Any]) -> None:
        """A Deferred's canceller: :meth:`abort`."""
        self.abort()


class SpilledBody:
    """An answer body past the size a caller holds: the bytes so far and the rest unread.

    The upstream connection stays paused until :meth:`relay` or :meth:`abort`; one of
    them must be called.
    """

    def __init__(self, reader: _SpillingReader) -> None:
        self._reader = reader

    @property
    def head_size(self) -> int:
        """Bytes read before the limit was passed."""
        return self._reader.size

    def abort(self) -> None:
        """Drop the rest of the body (its connection is closed)."""
        self._reader.abort()

    async def relay(
        self,
        write: Callable[[bytes], Any],
        consumer: IConsumer,
        *,
        clock: IReactorTime | None = None,
        timeout: float | None = None,
        stall_timeout: float | None = None,
        backlog: Callable[[], int | None] = lambda: None,
    ) -> int:
        """Write the bytes read so far, then the rest as it arrives; the bytes written.

        Args:
            write: Called with each chunk (the first is everything read so far).
            consumer: Where the chunks end up (a request): its backpressure pauses the
                upstream connection, and the idle clock with it.
            clock: With ``timeout``: the clock of the idle timeout.
            timeout: Seconds the rest may stop arriving while the consumer is not
                pausing it (``None``: no limit).
            stall_timeout: With ``clock``: seconds the consumer may hold the transfer
                back while taking nothing (a client that reads nothing); ``None``: no
                limit. See :class:`~gateway.couch.idle.StallWatch`.
            backlog: Bytes the consumer still holds to send, which shows it taking some.

        Raises:
            CouchTimeout: The body stopped arriving for ``timeout`` seconds.
            ClientStalled: The consumer held the transfer back for ``stall_timeout``.
            CouchUnreachable: The body broke off.
            Exception: What ``write`` raised.
        """
        reader = self._reader
        head = b"".join(reader.parts)
        reader.parts = []
        relayed: Deferred[int] = Deferred(reader.cancel_transfer)
        reader.relayed = relayed
        stall: StallWatch | None = None
        if reader.ended is None:
            if clock is not None and timeout is not None:
                reader.idle = IdleTimeout(clock, timeout, relayed.cancel)
            if clock is not None and stall_timeout is not None:
                stall = StallWatch(clock, stall_timeout, relayed.cancel, backlog)
            reader.sink = write
            # Registered before anything is written, so the first write's backpressure
            # already pauses the upstream connection; resuming delivers nothing at once.
            consumer.registerProducer(
                PausingProducer(reader.transport, reader.idle, stall), True
            )
            reader.consumer = consumer
            reader.transport.resumeProducing()  # type: ignore[union-attr]
        complete = False
        try:
            write(head)
            if reader.ended is not None:
                if not body_complete(reader.ended):
                    _broke_off(reader.ended).raiseException()
                complete = True
                return len(head)
            count = len(head) + await relayed
            complete = True
            return count
        except CancelledError:
            idle = reader.idle
            if idle is not None and idle.expired:
                raise silent_midway(idle.seconds) from None
            if stall is not None and stall.expired:
                raise stalled_midway(stall.seconds) from None
            raise
        finally:
            reader.stopped = True
            if not complete:
                reader.abort()
            if reader.idle is not None:
                reader.idle.stop()
            if stall is not None:
                stall.stop()
            # Before the caller answers the failure: a request must not end with a
            # producer still registered.
            reader.release_consumer()


async def read_or_spill(
    response: IResponse, limit: int, *, progress: IdleTimeout | None = None
) -> bytes | SpilledBody:
    """Read a response body whole, or up to just past ``limit`` bytes.

    Args:
        response: A response whose body has not been read.
        limit: Most bytes to hold; a longer body is returned as a :class:`SpilledBody`.
        progress: An idle timeout of the whole request that every chunk pushes back.

    Returns:
        The body, or a :class:`SpilledBody` (its connection paused; relay or abort it).

    Raises:
        Exception: What broke the body off before it was complete or spilled.
    """
    reader = _SpillingReader(limit, progress)
    response.deliverBody(reader)  # type: ignore[no-untyped-call]
    return await reader.outcome
