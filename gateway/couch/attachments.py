"""Streaming attachment bodies in and out, in constant memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.web._newclient import ResponseFailed
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer, IResponse

from gateway.couch.transport import stream_body
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
    try:
        return await stream_body(response, write, consumer=consumer, clock=clock,
                                 timeout=timeout)
    except ResponseFailed as exc:
        raise CouchUnreachable("connection lost while streaming an attachment") from exc
