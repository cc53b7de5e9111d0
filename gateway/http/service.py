"""The gateway as a ``twisted.application`` service: listen, and shut down gracefully.

``stopService`` (run on SIGTERM via the reactor's ``before shutdown`` trigger) stops
accepting connections first, then waits for in-flight requests to finish — at most
``settings.shutdown_grace`` seconds — ends those still running (``503 shutting_down``,
or a cut connection once their answer has begun), and finally closes the upstream
connection pool.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from gateway.http.app import GatewayApp
from gateway.http.site import GatewaySite

__all__ = ["GatewayService"]

_log = Logger(namespace="gateway.service")

#: Default listen backlog (Twisted's own default is 50).
LISTEN_BACKLOG = 1024


class GatewayService(Service):
    """Serves a :class:`GatewayApp` on ``host:port``.

    Args:
        app: The application.
        reactor: The reactor (TCP listening and clock).
        host: Listen address.
        port: Listen port (0: any free one; see :attr:`port`).
        pool: The upstream pool to close on shutdown (optional).
        backlog: The listen backlog. Twisted's default (50) overflows when many clients
            (re)connect at once — e.g. 1,000 WebSocket clients resuming after an outage —
            and the kernel then drops or resets handshakes (BENCHMARKS.md, F5). The
            kernel caps it at ``net.core.somaxconn``.
    """

    def __init__(
        self, app: GatewayApp, reactor: Any, host: str, port: int,
        pool: HTTPConnectionPool | None = None,
        backlog: int = LISTEN_BACKLOG,
    ) -> None:
        self.app = app
        self.reactor = reactor
        self.host = host
        self.requested_port = port
        self.pool = pool
        self.backlog = backlog
        self.listening_port: IListeningPort | None = None
        self.site: GatewaySite | None = None
        self.ready: Deferred[IListeningPort] = Deferred()

    @property
    def port(self) -> int:
        """The port actually listened on."""
        assert self.listening_port is not None
        number: int = self.listening_port.getHost().port  # type: ignore[attr-defined]
        return number

    def startService(self) -> None:  # noqa: N802
        """Start listening."""
        super().startService()  # type: ignore[no-untyped-call]
        endpoint: Any = TCP4ServerEndpoint(  # type: ignore[no-untyped-call]
            self.reactor, self.requested_port, backlog=self.backlog, interface=self.host
        )
        self.site = self.app.site()
        listening: Deferred[IListeningPort] = endpoint.listen(self.site)

        def started(port: IListeningPort) -> IListeningPort:
            self.listening_port = port
            self.ready.callback(port)
            return port

        listening.addCallbacks(started, self.ready.errback)

    async def _stop(self) -> None:
        if self.listening_port is not None:
            await maybeDeferred(self.listening_port.stopListening)
        grace = self.app.settings.shutdown_grace
        self.app.splicer.start_grace()  # spliced transfers: the same deadline
        if self.app.in_flight.count > 0:
            _log.info("waiting up to {grace}s for {n} in-flight requests",
                      grace=grace, n=self.app.in_flight.count)
            idle = self.app.in_flight.wait_idle()
            timer = self.reactor.callLater(grace, idle.cancel)
            try:
                await idle
            except Exception:
                _log.warn("shutdown deadline passed with {n} requests in flight: "
                          "ending them (503 shutting_down, or cut once answering)",
                          n=self.app.in_flight.count)
                for request in self.app.in_flight.requests:
                    stop = getattr(request, "stop_for_shutdown", None)
                    if stop is not None:
                        stop()
            finally:
                if timer.active():
                    timer.cancel()
        await self.app.splicer.idle()  # bounded: each transfer has the grace's deadline
        self.app.splicer.close()
        if self.pool is not None:
            await self.pool.closeCachedConnections()

    async def drain(self, seconds: float) -> None:
        """Keep serving for ``seconds``, every answer closing its connection.

        The caller has made ``/ready`` fail: a load balancer takes the gateway out of
        rotation meanwhile, and clients' next requests open connections it sends
        elsewhere, instead of meeting a closed port.
        """
        if self.site is not None:
            self.site.closing_connections = True
        _log.info("draining for {seconds}s before stopping (/ready fails)", seconds=seconds)
        await deferLater(self.reactor, seconds, lambda: None)

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Stop accepting, finish in-flight requests (within the grace), close the pool."""
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())
