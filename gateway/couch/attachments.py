"""Streaming attachment bodies in and out, in constant memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

import treq
from twisted.internet.interfaces import IConsumer
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer, IResponse

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


async def stream_into(response: IResponse, sink: AttachmentSink) -> int:
    """Deliver a response body chunk by chunk into a sink.

    Args:
        response: A response whose body has not been read.
        sink: A binary file object (``write``), an ``IConsumer`` or a callable taking bytes.

    Returns:
        The number of bytes delivered.
    """
    if IConsumer.providedBy(sink):
        write: Callable[[bytes], Any] = sink.write
    elif hasattr(sink, "write"):
        write = sink.write
    elif callable(sink):
        write = sink
    else:
        raise TypeError(f"cannot stream into {type(sink).__name__}")
    received = 0

    def collect(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        write(chunk)

    try:
        await treq.collect(response, collect)
    except Exception as exc:
        if isinstance(exc, CouchUnreachable):
            raise
        from twisted.web._newclient import ResponseFailed

        if isinstance(exc, ResponseFailed):
            raise CouchUnreachable("connection lost while streaming an attachment") from exc
        raise
    return received
