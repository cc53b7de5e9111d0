"""The live-changes endpoint as a Twisted ``Service``: its hub, its factory, its shutdown."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from gateway.config import Settings
from gateway.couch.transport import CouchTransport
from gateway.send_threads import SendThreads
from gateway.ws.access import Reverify
from gateway.ws.factory import ChangesServerFactory
from gateway.ws.handshake import Authenticate
from gateway.ws.hub import FeedHub
from gateway.ws.metrics import WsMetrics
from gateway.ws.protocol import CLOSE_GOING_AWAY
from gateway.ws.resource import UpgradingResource

__all__ = ["ChangesService"]


class ChangesService(Service):
    """The live-changes endpoint as a service: hub + factory + send threads + shutdown.

    Args:
        service_transport: The gateway's own CouchDB identity (reads shared feeds).
        settings: Gateway settings.
        authenticate: Verifies handshake credentials.
        clock: The reactor.
        socket_send_buffer: See :class:`ChangesServerFactory`.
        reverify: See :class:`ChangesServerFactory`.
        send_threads: The threads of the hub's broadcast send loops (by default
            ``SendThreads(settings.ws_send_threads)``); started and stopped with this service.
    """

    def __init__(
        self,
        service_transport: CouchTransport,
        settings: Settings,
        authenticate: Authenticate,
        clock: IReactorTime,
        *,
        socket_send_buffer: int | None = None,
        reverify: Reverify | None = None,
        send_threads: SendThreads | None = None,
    ) -> None:
        self.settings = settings
        self.send_threads = send_threads or SendThreads(settings.ws_send_threads)
        self.hub = FeedHub(service_transport, self._prepare, clock,
                           heartbeat_ms=settings.feed_heartbeat_ms,
                           max_feeds=settings.ws_max_feeds,
                           send_each=self.send_threads.send_each)
        self.factory = ChangesServerFactory(
            self.hub, settings, authenticate, clock, socket_send_buffer=socket_send_buffer,
            reverify=reverify,
        )
        self.clock = clock

    def _prepare(self, payload: bytes) -> Any:
        return self.factory.prepareMessage(payload)

    @property
    def metrics(self) -> WsMetrics:
        """The WebSocket counters."""
        return self.factory.metrics

    def metrics_snapshot(self) -> dict[str, float | int]:
        """Counters including the number of upstream feeds."""
        return self.metrics.snapshot(self.hub)

    def prometheus(self) -> str:
        """:meth:`metrics_snapshot` in Prometheus text (a ``/metrics`` collector)."""
        return self.metrics.prometheus(self.hub)

    def resource(self) -> WebSocketResource:
        """The Twisted Web resource to mount at ``/api/v1/changes``."""
        return UpgradingResource(self.factory)  # type: ignore[no-untyped-call,unused-ignore]

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Start the send threads and the hub."""
        super().startService()  # type: ignore[no-untyped-call,unused-ignore]
        self.send_threads.startService()
        self.hub.startService()  # type: ignore[no-untyped-call,unused-ignore]

    def stopService(self) -> Deferred[None]:  # noqa: N802 - Twisted's name
        """Close every socket with 1001 and resume seqs, then every upstream feed."""
        super().stopService()  # type: ignore[no-untyped-call,unused-ignore]
        return Deferred.fromCoroutine(self._shutdown())

    async def _shutdown(self) -> None:
        self.factory.accepting = False
        connections = list(self.factory.connections)
        closed = [c.when_closed() for c in connections]
        for connection in connections:
            connection.end(CLOSE_GOING_AWAY, "server shutting down")
        if closed:
            waiting = DeferredList(closed, consumeErrors=True)
            timer = self.clock.callLater(max(1.0, self.settings.shutdown_grace), waiting.cancel)
            try:
                await waiting  # a DeferredList fires, not fails, when the timer cancels it
            finally:
                if timer.active():
                    timer.cancel()
            for connection in connections:
                if connection in self.factory.connections:  # past the grace: drop it
                    connection.abort()
        self.factory.rechecks.stop()
        await self.factory.drain_tasks()
        try:
            await self.hub.stopService()
        finally:
            self.send_threads.stopService()
