"""Deadlines that progress pushes back: a slow transfer lives, a silent one ends.

A request with a body of unknown duration (an attachment streamed up or down) cannot
have a fixed deadline: a large body on a slow link would be cut however generous the
limit. :class:`IdleTimeout` fires only when nothing has moved for its number of
seconds; every chunk sent or received calls :meth:`IdleTimeout.touch`. A consumer that
asked to pause the transfer stops the clock (:meth:`IdleTimeout.pause`): waiting for it
is not the server's silence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

__all__ = ["IdleTimeout", "PausingProducer", "ProgressBody", "StallWatch"]


class IdleTimeout:
    """Calls ``expire`` once nothing has moved for ``seconds``.

    Args:
        clock: The reactor's clock.
        seconds: How long silence may last.
        expire: Called once, when it does last that long.
    """

    def __init__(self, clock: IReactorTime, seconds: float, expire: Callable[[], None]) -> None:
        self._clock = clock
        self.seconds = seconds
        self._expire = expire
        self.expired = False
        self._stopped = False
        self._call: IDelayedCall | None = clock.callLater(seconds, self._fire)

    def _fire(self) -> None:
        self._call = None
        self.expired = True
        self._expire()

    def touch(self) -> None:
        """Something moved: the silence starts again from now."""
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)

    def pause(self) -> None:
        """Stop counting (the other side is waiting for us, not silent)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def resume(self) -> None:
        """Count again, from now."""
        if self._call is None and not self.expired and not self._stopped:
            self._call = self._clock.callLater(self.seconds, self._fire)

    def stop(self) -> None:
        """The transfer is over: never fire."""
        self._stopped = True
        self.pause()


class StallWatch:
    """Gives up a transfer whose consumer holds it back and takes nothing meanwhile.

    A consumer (a request) pauses its producer when its send buffer is full and resumes
    it only once that buffer is empty, which a slow but steady reader of a large buffer
    takes long to do. So the time that counts from a pause is not the verdict: when it
    runs out, the consumer's backlog is measured (what it still holds to send, its
    kernel's send queue included), and a smaller one than at the last look means the
    client took bytes meanwhile: the time starts again. A backlog that did not shrink
    in ``seconds`` calls ``expire``. That is nginx's ``send_timeout``: time without
    progress, as the sender sees it (a client's window opens a segment at a time).

    Args:
        clock: The reactor's clock.
        seconds: How long the consumer may take nothing.
        expire: Called once, when it took nothing for that long.
        backlog: Bytes the consumer still holds to send (``None`` when unknown: then
            no progress can be seen, and the time from the pause decides).
    """

    def __init__(
        self, clock: IReactorTime, seconds: float, expire: Callable[[], None],
        backlog: Callable[[], int | None],
    ) -> None:
        self._clock = clock
        self.seconds = seconds
        self._expire = expire
        self._backlog = backlog
        self.expired = False
        self._stopped = False
        self._mark: int | None = None
        self._call: IDelayedCall | None = None

    def hold(self) -> None:
        """The consumer paused the transfer: start counting."""
        if self._call is None and not self._stopped and not self.expired:
            self._mark = self._backlog()
            self._call = self._clock.callLater(self.seconds, self._look)

    def release(self) -> None:
        """The consumer resumed the transfer: stop counting."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def stop(self) -> None:
        """The transfer is over: never fire."""
        self._stopped = True
        self.release()

    def _look(self) -> None:
        self._call = None
        backlog = self._backlog()
        mark = self._mark
        if backlog is not None and mark is not None and backlog < mark:
            self._mark = backlog  # the client took some: it is slow, not gone
            self._call = self._clock.callLater(self.seconds, self._look)
            return
        self.expired = True
        self._expire()


@implementer(IPushProducer)
class PausingProducer:
    """A response body's producer, seen by a consumer: pausing it also pauses the clock.

    Args:
        producer: The response body's transport (an ``IPushProducer``).
        idle: The transfer's idle timeout, if any.
        stall: Watches the consumer while it keeps the producer paused (a client that
            reads nothing), if any.
    """

    def __init__(
        self, producer: Any, idle: IdleTimeout | None, stall: StallWatch | None = None
    ) -> None:
        self._producer = producer
        self._idle = idle
        self._stall = stall

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        """Stop reading the response, stop counting its silence, count the consumer's."""
        if self._idle is not None:
            self._idle.pause()
        if self._stall is not None:
            self._stall.hold()
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        """Read again, counting from now."""
        if self._stall is not None:
            self._stall.release()
        if self._idle is not None:
            self._idle.resume()
        self._producer.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        """Abandon the response."""
        self._producer.stopProducing()


class _TouchingConsumer:
    """The request's consumer, as a body producer sees it: every write is progress."""

    def __init__(self, consumer: Any, touch: Callable[[], None]) -> None:
        self._consumer = consumer
        self._touch = touch

    def write(self, data: bytes) -> None:
        self._touch()
        self._consumer.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@implementer(IBodyProducer)
class ProgressBody:
    """A request body producer whose every write pushes an idle deadline back.

    Args:
        producer: The body (an ``IBodyProducer``).
        touch: Called before each chunk is written.
    """

    def __init__(self, producer: Any, touch: Callable[[], None]) -> None:
        self._producer = producer
        self._touch = touch
        self.length = producer.length

    def startProducing(self, consumer: Any) -> Any:  # noqa: N802
        """Produce into ``consumer``, touching the deadline on every write."""
        return self._producer.startProducing(_TouchingConsumer(consumer, self._touch))

    def pauseProducing(self) -> None:  # noqa: N802
        """Pause the body."""
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        """Resume the body."""
        self._producer.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        """Stop the body."""
        self._producer.stopProducing()
