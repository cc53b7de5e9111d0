"""The Twisted ``Site`` of the gateway and the front door every request passes.

:class:`GatewaySite` makes :class:`~gateway.http.request.GatewayRequest` s on
:class:`~gateway.http.channel.GatewayChannel` s. :class:`FrontDoor` runs before routing:
request id, traversal checks, CORS, rate limiting, size limit, mounted resources (e.g.
the WebSocket endpoint), in-flight accounting, metrics and the access log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web import server
from twisted.web.resource import IResource, Resource

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowedHere,
    PayloadTooLarge,
    RouteNotFound,
)
from gateway.http.accesslog import AccessLog
from gateway.http.channel import SERVER_NAME, _gateway_channel
from gateway.http.client_address import ClientAddress
from gateway.http.cors import Cors
from gateway.http.metrics import Metrics
from gateway.http.paths import check_raw_path
from gateway.http.ratelimit import RateLimiter
from gateway.http.request import GatewayRequest, _aborted, logged_status
from gateway.http.responses import render_error
from gateway.http.streaming import no_room

__all__ = ["STREAMED_UPLOADS", "FrontDoor", "GatewaySite", "InFlight"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_UNLIMITED = (b"/health", b"/ready", b"/metrics")

#: Request targets whose ``PUT`` body is streamed upstream (attachment uploads).
STREAMED_UPLOADS = re.compile(rb"^/api/v1/db/[^/?]+/docs/[^/?]+/attachments/[^/?]+(\?|$)")


class GatewaySite(server.Site):
    """A ``Site`` producing :class:`GatewayRequest` s.

    Args:
        resource: The root resource (a :class:`FrontDoor`).
        max_upload_bytes: Largest attachment body (bigger ones answer 413).
        max_json_bytes: Largest body of any other route (bigger ones answer 413).
        header_timeout: Seconds from a request line to the end of its headers before the
            connection is dropped (``None``: no limit).
        streamed_uploads: Request targets whose ``PUT`` bodies are streamed, not
            stored (``None``: store every body).

    Attributes:
        closing_connections: Every answer from now on closes its connection (set while
            the gateway drains before stopping; see ``WALLABY_SHUTDOWN_DRAIN``).
    """

    closing_connections = False
    protocol = _gateway_channel

    def __init__(
        self, resource: IResource, max_upload_bytes: int, max_json_bytes: int | None = None,
        streamed_uploads: re.Pattern[bytes] | None = STREAMED_UPLOADS,
        header_timeout: float | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            resource, requestFactory=GatewayRequest, **kwargs
        )
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_upload_bytes if max_json_bytes is None else max_json_bytes
        self.header_timeout = header_timeout
        self.streamed_uploads = streamed_uploads
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        """Twisted's combined log is replaced by the structured access log."""


class InFlight:
    """The requests being served; fires waiters when none are left."""

    def __init__(self) -> None:
        self._requests: dict[Any, None] = {}
        self._idle: list[Deferred[None]] = []

    @property
    def count(self) -> int:
        """How many requests are being served."""
        return len(self._requests)

    @property
    def requests(self) -> list[Any]:
        """The requests being served, oldest first."""
        return list(self._requests)

    def begin(self, request: Any) -> None:
        """``request`` is being served."""
        self._requests[request] = None

    def end(self, request: Any) -> None:
        """``request`` is done (again: nothing)."""
        self._requests.pop(request, None)
        if not self._requests:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def wait_idle(self) -> Deferred[None]:
        """A Deferred firing once no request is in flight."""
        if not self._requests:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter


class FrontDoor(Resource):
    """Cross-cutting work for every request, then the router.

    Args:
        router: The routing resource (the Klein app's).
        clock: Current time in seconds.
        metrics: Where counts and latencies go.
        access_log: The structured access log.
        cors: CORS policy.
        limiter: Per-client rate limiter.
        in_flight: In-flight counter (graceful shutdown waits on it).
        mounts: Exact paths served by other resources (e.g. ``b"/api/v1/changes"``).
        client_address: Finds the client behind trusted proxies (none by default).
        methods_of: The methods the routes at a path take (for the ``Allow`` of a
            method the router would otherwise take for another).
    """

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(
        self,
        router: IResource,
        *,
        clock: Callable[[], float],
        metrics: Metrics,
        access_log: AccessLog,
        cors: Cors,
        limiter: RateLimiter,
        in_flight: InFlight,
        mounts: Mapping[bytes, IResource],
        client_address: ClientAddress | None = None,
        methods_of: Callable[[str], set[str]] = lambda path: set(),
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.router: Any = router
        self.clock = clock
        self.metrics = metrics
        self.access_log = access_log
        self.cors = cors
        self.limiter = limiter
        self.in_flight = in_flight
        self.mounts = mounts
        self.client_address = client_address or ClientAddress()
        self.methods_of = methods_of

    def render(self, request: Any) -> bytes | int:
        """Serve one request."""
        request.started = self.clock()
        request.client_host = self.client_address.of(request)
        request.client_key = self.client_address.key(request.client_host)
        incoming = request.getHeader("x-request-id")
        if incoming and _REQUEST_ID.match(incoming):
            request.request_id = incoming
        request.setHeader("X-Request-Id", request.request_id)
        # Twisted's own names its version. Set once here, where every request passes
        # (a refused WebSocket handshake writes these headers itself); no relay copies
        # CouchDB's Server.
        request.responseHeaders.setRawHeaders(b"server", [SERVER_NAME])
        request.setHeader("X-Content-Type-Options", "nosniff")
        request.setHeader("Cache-Control", "no-store")
        mounted: Any = self.mounts.get(request.path)
        # Mounted resources (the WebSocket endpoint) hold connections open for hours:
        # they are logged but not counted in flight (shutdown does not wait for them).
        counted = mounted is None
        if counted:
            self.in_flight.begin(request)
            self.metrics.in_flight += 1
        request.notifyFinish().addBoth(self._finished, request, counted)
        request.access_logged = True
        try:
            self._check_singletons(request)
            if request.path != b"*":
                check_raw_path(request.uri)
                if self.cors.apply(request):
                    request.route = "preflight"
                    request.write(b"")  # a 204: no Content-Length (RFC 9110 8.6)
                    request.finish()
                    return server.NOT_DONE_YET
            if request.path not in _UNLIMITED:
                self.limiter.check(request.client_key)
            self._check_method(request)
            if request.too_large:
                raise PayloadTooLarge("the request body is too large")
            if request.spool_error is not None:
                raise no_room(request.spool_error)
            if request.path == b"*":
                return self._asterisk(request)
        except GatewayError as exc:
            return render_error(request, exc)
        if mounted is not None:
            request.route = "mounted"
            result: bytes | int = mounted.render(request)
            return result
        # Twisted decodes each segment of ``postpath``; the router must see them still
        # percent-encoded so that ``%2F`` inside an id stays inside its segment.
        request.postpath = request.path[1:].split(b"/")
        result = self.router.render(request)
        return result

    @staticmethod
    def _check_singletons(request: Any) -> None:
        """Refuse a request naming ``Host`` or ``Authorization`` more than once.

        ``Host`` is named exactly once in HTTP/1.1 (RFC 9112 3.2), ``Authorization`` at
        most once (RFC 9110 11.6.2, 5.3). With two, whoever reads the other one (a proxy
        in front, Autobahn joining them) takes another host or another caller than the
        gateway would. REST requests and WebSocket handshakes alike (the endpoint is
        mounted here).
        """
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1 or (not hosts and request.clientproto == b"HTTP/1.1"):
            raise InvalidRequest("an HTTP/1.1 request has exactly one Host header "
                                 "(RFC 9112 section 3.2)")
        if len(request.requestHeaders.getRawHeaders(b"authorization") or []) > 1:
            raise InvalidRequest("a request has at most one Authorization header "
                                 "(RFC 9110 section 11.6.2)")

    def _check_method(self, request: Any) -> None:
        """Methods are case-sensitive (RFC 9110 9.1): ``delete`` is not ``DELETE``.

        The router would take the one for the other, and a proxy that filters methods
        passed it as an unknown one.
        """
        method: bytes = request.method
        if not method.isupper():
            allowed = ({"GET"} if request.path in self.mounts  # the WebSocket endpoint
                       else self.methods_of(request.path.decode("latin-1")))
            if not allowed:
                raise RouteNotFound("no such route")
            request.setHeader("Allow", ", ".join(sorted(allowed)))
            raise MethodNotAllowedHere(
                f"method names are case-sensitive: this route takes {', '.join(sorted(allowed))}")

    def _asterisk(self, request: Any) -> bytes:
        """``OPTIONS *`` asks what the server takes; ``*`` means nothing to any other method."""
        request.route = "asterisk"
        methods = "DELETE, GET, HEAD, OPTIONS, POST, PUT"
        if request.method != b"OPTIONS":
            request.setHeader("Allow", "OPTIONS")
            raise MethodNotAllowedHere("the target '*' is for OPTIONS only")
        request.setHeader("Allow", methods)
        request.setHeader("Content-Length", "0")
        return b""

    def record_refusal(self, error: GatewayError, request_id: str, peer: Any,
                       method: bytes) -> None:
        """Log and count a request the channel refused before it reached :meth:`render`.

        Args:
            error: What the channel answered.
            request_id: The ``X-Request-Id`` it sent.
            peer: The connection's peer address.
            method: The request's method, if its request line was read.
        """
        method_text = method.decode("ascii", "replace")
        self.metrics.observe_request("refused_head", method_text, error.status, 0.0)
        self.metrics.count_error("refused_head", error.error)
        self.access_log.record(
            request_id=request_id, method=method_text, path="-", route="refused_head",
            status=error.status, duration_ms=0.0, bytes_sent=0,
            client=str(getattr(peer, "host", "unknown")), user=None, aborted=False,
            error=error.error,
        )

    def _finished(self, outcome: Any, request: Any, counted: bool) -> None:
        if counted:
            self.in_flight.end(request)
            self.metrics.in_flight -= 1
        duration = self.clock() - request.started
        status = logged_status(request)
        self.metrics.observe_request(
            request.route, request.method.decode("ascii", "replace"), status, duration
        )
        if request.error_code is not None:
            self.metrics.count_error(request.route, request.error_code)
        self.access_log.record(
            request_id=request.request_id,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            route=request.route,
            status=status,
            duration_ms=round(duration * 1000, 2),
            bytes_sent=request.sentLength,
            client=request.client_host,
            user=request.user_name,
            aborted=_aborted(request, outcome),
            error=request.error_code,
        )
        return None
