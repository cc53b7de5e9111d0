"""``write_now`` and ``send_each`` over real loopback TCP: sent at once, ordered, never lost."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport

from gateway.eager_write import (
    flush_now,
    idle_socket,
    nothing_queued,
    queued_bytes,
    send_each,
    write_now,
)


class _Server(Protocol):
    def __init__(self, connected: Deferred[Any]) -> None:
        self.on_connect = connected

    def connectionMade(self) -> None:
        self.on_connect.callback(self.transport)


class _Reader(Protocol):
    """Collects bytes; can start paused (does not read) to make the sender's buffer fill."""

    def __init__(self, paused: bool) -> None:
        self.paused = paused
        self.received = bytearray()
        self.ready: Deferred[None] = Deferred()
        self.waiting: tuple[int, Deferred[None]] | None = None

    def connectionMade(self) -> None:
        if self.paused:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self.ready.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting is not None and len(self.received) >= self.waiting[0]:
            _, done = self.waiting
            self.waiting = None
            done.callback(None)

    def wait_for(self, size: int) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        if len(self.received) >= size:
            done.callback(None)
        else:
            self.waiting = (size, done)
        return done


async def _pair(reactor: Any, *, paused: bool = False) -> tuple[Any, _Reader, Any]:
    server_side: Deferred[Any] = Deferred()
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: _Server(server_side)),
                             interface="127.0.0.1")
    reader = _Reader(paused)
    client = reactor.connectTCP("127.0.0.1", port.getHost().port,
                                ClientFactory.forProtocol(lambda: reader))
    transport = await server_side
    await reader.ready
    await port.stopListening()
    return transport, reader, client


async def test_idle_socket_is_written_without_waiting_for_the_reactor(reactor: Any) -> None:
    transport, reader, client = await _pair(reactor)
    try:
        write_now(transport, b"frame-1")
        # Nothing queued in Twisted, the socket not registered for writability: the
        # kernel has the bytes already.
        assert transport._tempDataLen == 0
        assert transport.dataBuffer[transport.offset:] == b""
        assert transport not in reactor.getWriters()
        await reader.wait_for(7)
        assert bytes(reader.received) == b"frame-1"
    finally:
        transport.loseConnection()
        client.disconnect()


async def test_backed_up_socket_queues_the_rest_in_order(reactor: Any) -> None:
    transport, reader, client = await _pair(reactor, paused=True)
    try:
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        blocks = [bytes([65 + i % 26]) * 100_000 for i in range(8)]
        for block in blocks:
            write_now(transport, block)
        # The peer does not read: most of it had to be queued by Twisted.
        assert transport._tempDataLen > 0
        assert transport in reactor.getWriters()
        write_now(transport, b"tail")  # must go behind the queue, not jump it
        reader.transport.resumeProducing()  # type: ignore[union-attr]
        expected = b"".join(blocks) + b"tail"
        await reader.wait_for(len(expected))
        assert bytes(reader.received) == expected
    finally:
        transport.loseConnection()
        client.disconnect()


async def test_closing_transport_falls_back_to_write(reactor: Any) -> None:
    transport, reader, client = await _pair(reactor, paused=True)
    try:
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        write_now(transport, b"x" * 200_000)
        transport.loseConnection()  # closes once the queue is flushed
        write_now(transport, b"y")
        assert transport.disconnecting
        reader.transport.resumeProducing()  # type: ignore[union-attr]
        await reader.wait_for(200_001)
        assert bytes(reader.received) == b"x" * 200_000 + b"y"
    finally:
        client.disconnect()


def test_other_transports_get_a_plain_write() -> None:
    transport = StringTransport()  # type: ignore[no-untyped-call]
    write_now(transport, b"a")
    write_now(transport, b"b")
    assert transport.value() == b"ab"  # type: ignore[no-untyped-call]


async def test_dead_peer_is_noticed_by_twisted_not_raised(reactor: Any) -> None:
    transport, reader, client = await _pair(reactor)
    lost: Deferred[None] = Deferred()
    transport.protocol.connectionLost = lambda reason: lost.callback(None)
    client.disconnect()
    await reader.wait_for(0)
    # Keep writing until the kernel reports the reset; write_now must never raise.
    for _ in range(100):
        write_now(transport, b"z" * 10_000)
        if not transport.connected:
            break
        await _tick(reactor)
    await lost


def _tick(reactor: Any) -> Deferred[None]:
    done: Deferred[None] = Deferred()
    reactor.callLater(0.01, done.callback, None)
    return done


async def test_flush_now_sends_what_twisted_queued(reactor: Any) -> None:
    transport, reader, client = await _pair(reactor)
    try:
        transport.write(b"queued")  # Twisted's own write: waits for the reactor
        assert transport._tempDataLen == 6
        flush_now(transport)
        assert transport._tempDataLen == 0 and transport not in reactor.getWriters()
        await reader.wait_for(6)
        assert bytes(reader.received) == b"queued"
        flush_now(transport)  # nothing queued: nothing to do
        flush_now(StringTransport())  # type: ignore[no-untyped-call]  # not TCP: left alone
    finally:
        transport.loseConnection()
        client.disconnect()


async def test_flush_now_leaves_a_closing_transport_to_the_reactor(reactor: Any) -> None:
    transport, reader, client = await _pair(reactor)
    try:
        transport.write(b"last words")
        transport.loseConnection()
        flush_now(transport)
        assert transport._tempDataLen == 10  # the reactor flushes, then closes
        await reader.wait_for(10)
        assert bytes(reader.received) == b"last words"
    finally:
        client.disconnect()


async def test_idle_socket_only_for_an_open_tcp_transport_with_nothing_queued(
    reactor: Any,
) -> None:
    transport, reader, client = await _pair(reactor)
    try:
        assert idle_socket(transport) is transport.socket
        transport.write(b"queued")  # in Twisted's queue: a direct send would jump it
        assert idle_socket(transport) is None
        await reader.wait_for(6)
        assert idle_socket(transport) is transport.socket
        assert idle_socket(StringTransport()) is None  # type: ignore[no-untyped-call]
        transport.loseConnection()
        assert idle_socket(transport) is None
    finally:
        client.disconnect()


async def test_send_each_reports_what_every_socket_took(reactor: Any) -> None:
    """One frame to many sockets: a full socket takes part of it or nothing, a dead one
    nothing, and neither raises; the rest is the caller's to queue."""
    pairs = [await _pair(reactor, paused=(n == 1)) for n in range(4)]
    sockets = [transport.socket for transport, _reader, _client in pairs]
    try:
        full = sockets[1]
        full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        while True:  # fill the paused peer's socket until the kernel takes no more
            try:
                full.send(b"f" * 65536)
            except BlockingIOError:
                break
        pairs[2][2].disconnect()
        for _ in range(100):  # until a send on it fails (reset, or closed by Twisted)
            try:
                sockets[2].send(b"probe")
            except OSError:
                break
            await _tick(reactor)
        frame = b"frame" * 1000
        sent = send_each(sockets, frame)
        assert sent[0] == sent[3] == len(frame)
        assert sent[1] < len(frame) and sent[2] == 0
        await pairs[0][1].wait_for(len(frame))
        await pairs[3][1].wait_for(len(frame))
        assert bytes(pairs[0][1].received) == bytes(pairs[3][1].received) == frame
    finally:
        for transport, _reader, client in pairs:
            transport.abortConnection()
            client.disconnect()


async def test_queued_bytes_counts_twisted_and_kernel_queues_until_the_peer_reads(
    reactor: Any,
) -> None:
    transport, reader, client = await _pair(reactor, paused=True)
    try:
        assert queued_bytes(transport) == 0
        payload = b"q" * 3_000_000
        transport.write(payload)
        for _ in range(20):  # let Twisted hand to the kernel what it takes
            await _tick(reactor)
        twisted_only = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        held = queued_bytes(transport)
        assert held is not None and held > twisted_only  # the kernel's queue is counted
        assert held <= len(payload)  # never more than was written and not yet read
        reader.transport.resumeProducing()  # type: ignore[union-attr]
        await reader.wait_for(len(payload))
        for _ in range(5):
            await _tick(reactor)
        assert queued_bytes(transport) == 0  # all of it taken by the peer
    finally:
        transport.loseConnection()
        client.disconnect()
    assert queued_bytes(StringTransport()) is None  # not a TCP transport


async def test_a_write_not_yet_handed_to_the_kernel_is_queued(reactor: Any) -> None:
    """``transport.write`` appends to ``_tempData`` until the reactor's next turn: those
    bytes are waiting (a splice or a direct send must not jump ahead of them, and a
    client's backlog includes them)."""
    transport, _reader, client = await _pair(reactor, paused=True)
    try:
        assert nothing_queued(transport) and queued_bytes(transport) == 0
        transport.write(b"w" * 5000)  # no reactor turn yet: nothing went to the kernel
        assert transport._tempDataLen == 5000
        assert not nothing_queued(transport)
        assert idle_socket(transport) is None
        assert queued_bytes(transport) == 5000
    finally:
        transport.loseConnection()
        client.disconnect()
