"""A loopback TCP proxy that injects faults between a client and a real server.

Modes: forward bytes (normal), ``stall()`` (keep every connection open but stop
forwarding in both directions, as a hung middlebox does), ``stall_after(n)`` (the same
once ``n`` more bytes came from the server: a server that stops mid-answer), ``resume()``, and
``reset_all()`` (abort every connection, as a crashed peer does). Used by the fault tests
to prove that heartbeats detect a silent upstream and that reconnection recovers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IListeningPort


class _Side(protocol.Protocol):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.peer: _Side | None = None
        self.held: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.proxy.stalled:
            self.held.append(data)  # swallowed until resume(): the peer sees silence
            return
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.held.append(data)

    def flush(self) -> None:
        held, self.held = self.held, []
        if self.peer is not None and self.peer.transport is not None:
            for chunk in held:
                self.peer.transport.write(chunk)

    def connectionLost(self, reason: Any = None) -> None:
        self.proxy.connections.discard(self)
        if self.peer is not None and self.peer.transport is not None and not self.proxy.stalled:
            self.peer.transport.loseConnection()


class _Upstream(_Side):
    def dataReceived(self, data: bytes) -> None:
        budget = self.proxy.server_bytes_left
        if budget is not None and not self.proxy.stalled:
            if len(data) >= budget:
                data, self.held = data[:budget], [data[budget:]]
                super().dataReceived(data)
                self.proxy.server_bytes_left = None
                self.proxy.stalled = True
                return
            self.proxy.server_bytes_left = budget - len(data)
        super().dataReceived(data)

    def connectionMade(self) -> None:
        self.proxy.connections.add(self)
        assert self.peer is not None
        self.peer.peer = self
        self.peer.flush()


class _Downstream(_Side):
    def connectionMade(self) -> None:
        self.proxy.connections.add(self)
        self.proxy.accepted += 1
        upstream = _Upstream(self.proxy)
        upstream.peer = self
        factory = protocol.ClientFactory()
        factory.protocol = lambda: upstream  # type: ignore[assignment]
        self.proxy.reactor.connectTCP("127.0.0.1", self.proxy.target_port, factory)
        self.peer = upstream


@dataclass
class FaultProxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<target_port>, with faults on demand."""

    reactor: Any
    target_port: int
    stalled: bool = False
    server_bytes_left: int | None = None
    accepted: int = 0
    connections: set[_Side] = field(default_factory=set)
    _listening: IListeningPort | None = None
    _port: int = 0

    def listen(self) -> int:
        """Start listening on a free loopback port; returns it."""
        proxy = self

        class Factory(protocol.ServerFactory):
            def buildProtocol(self, addr: Any) -> protocol.Protocol:
                return _Downstream(proxy)

        self._listening = self.reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        return self.port

    @property
    def port(self) -> int:
        """The listening port (kept after ``close()``, so URLs stay printable)."""
        if self._listening is not None:
            self._port = int(self._listening.getHost().port)
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def stall(self) -> None:
        """Stop forwarding in both directions without closing anything."""
        self.stalled = True

    def stall_after(self, count: int) -> None:
        """Forward ``count`` more bytes from the server, then stall like :meth:`stall`."""
        self.server_bytes_left = count

    def resume(self) -> None:
        """Forward again (bytes received while stalled are dropped, like a dead path)."""
        self.stalled = False
        for side in list(self.connections):
            side.held.clear()

    def reset_all(self) -> None:
        """Abort every open connection."""
        for side in list(self.connections):
            if side.transport is not None:
                side.transport.abortConnection()  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        self.reset_all()
        listening, self._listening = self._listening, None
        if listening is not None:
            await listening.stopListening()
