"""Streaming attachment bodies in and out, in constant memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseFailed
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer, IResponse

from gateway.couch.idle import IdleTimeout, PausingProducer
from gateway.couch.transport import body_complete, idle_timeout, silence
from gateway.errors import CouchUnreachable

__all__ = ["AttachmentContent", "AttachmentSink", "as_body_producer", "stream_into"]

#: What ``put_attachment`` accepts: bytes, a binary file object, or a body producer.
AttachmentContent = bytes | bytearray | memoryview | IO[bytes] | IBodyProducer
#: Where a streamed download goes: a binary file object, an ``IConsumer`` or a callable.
AttachmentSink = IO[bytes] | IConsumer | Callable[[bytes], Any]

_CHUNK = 64 * 1024


def as_body_producer(content: AttachmentContent) -> IBodyProducer:
    """Turn attachment content into a body producer without reading files whole.

    Args:
        content: Bytes, a binary file object (read in 64 KiB chunks), or a producer.

    Returns:
        A producer; its length is known for bytes and seekable files, so CouchDB gets a
        ``Content-Length``.
    """
    if IBodyProducer.providedBy(content):
        return content
    if isinstance(content, (bytes, bytearray, memoryview)):
        import io

        return FileBodyProducer(io.BytesIO(bytes(content)), readSize=_CHUNK)
    if hasattr(content, "read"):
        return FileBodyProducer(content, readSize=_CHUNK)
    raise TypeError(f"cannot send {type(content).__name__} as an attachment")


class _SinkWriter(Protocol):
    """Writes a response body into a sink as it arrives, within an idle timeout."""

    def __init__(self, write: Callable[[bytes], Any], consumer: IConsumer | None) -> None:
        self._write = write
        self._consumer = consumer
        self.idle: IdleTimeout | None = None
        self.received = 0
        self.finished: Deferred[int] = Deferred(self._cancel)

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        if self._consumer is not None:
            # A consumer that pauses us stops the reading (and the idle clock).
            self._consumer.registerProducer(PausingProducer(self.transport, self.idle), True)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.idle is not None:
            self.idle.touch()
        self.received += len(data)
        try:
            self._write(data)
        except Exception:
            # The sink failed (a full disk): stop the transfer, report its error.
            self.finished.errback()
            self._cancel(self.finished)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self.idle is not None:
            self.idle.stop()
        if self._consumer is not None:
            self._consumer.unregisterProducer()
        if self.finished.called:
            return
        if body_complete(reason):
            self.finished.callback(self.received)
        elif isinstance(reason.value, ResponseFailed):
            self.finished.errback(
                CouchUnreachable("connection lost while streaming an attachment")
            )
        else:
            self.finished.errback(reason)

    def _cancel(self, _: Deferred[int]) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


async def stream_into(
    response: IResponse,
    sink: AttachmentSink,
    *,
    clock: IReactorTime | None = None,
    timeout: float | None = None,
) -> int:
    """Deliver a response body chunk by chunk into a sink.

    Args:
        response: A response whose body has not been read.
        sink: A binary file object (``write``), an ``IConsumer`` (registered with the
            download as its streaming producer, so it can pause it) or a callable
            taking bytes.
        clock: With ``timeout``: the clock of the idle timeout.
        timeout: Seconds CouchDB may send nothing (while the sink is not pausing)
            before :class:`~gateway.errors.CouchTimeout`; ``None``: no limit.

    Returns:
        The number of bytes delivered.

    Raises:
        CouchTimeout: The body stopped arriving for ``timeout`` seconds.
        CouchUnreachable: The connection was lost.
    """
    consumer: IConsumer | None = None
    if IConsumer.providedBy(sink):
        consumer = sink
        write: Callable[[bytes], Any] = sink.write
    elif hasattr(sink, "write"):
        write = sink.write
    elif callable(sink):
        write = sink
    else:
        raise TypeError(f"cannot stream into {type(sink).__name__}")
    writer = _SinkWriter(write, consumer)
    writer.idle = idle_timeout(clock, timeout, writer.finished.cancel)
    response.deliverBody(writer)  # type: ignore[no-untyped-call]
    try:
        return await writer.finished
    except CancelledError:
        if writer.idle is not None and writer.idle.expired:
            raise silence(writer.idle.seconds) from None
        raise
    finally:
        if writer.idle is not None:
            writer.idle.stop()
