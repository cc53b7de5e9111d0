"""The Twisted ``Site`` of the gateway and the front door every request passes.

:class:`GatewayRequest` caps request bodies while they arrive (Twisted spools bodies
beyond 100 kB to a temporary file, so memory stays flat; beyond the cap the bytes are
discarded and the request is answered 413). :class:`FrontDoor` runs before routing:
request id, traversal checks, CORS, rate limiting, size limit, mounted resources
(e.g. the WebSocket endpoint), in-flight accounting, metrics and the access log.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web import server
from twisted.web.resource import IResource, Resource

from gateway.errors import GatewayError, PayloadTooLarge
from gateway.http.accesslog import AccessLog
from gateway.http.cors import Cors
from gateway.http.metrics import Metrics
from gateway.http.paths import check_raw_path
from gateway.http.ratelimit import RateLimiter
from gateway.http.responses import render_error

__all__ = ["FrontDoor", "GatewayRequest", "GatewaySite", "InFlight"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_UNLIMITED = (b"/health", b"/ready", b"/metrics")


class GatewayRequest(server.Request):
    """A request that knows its id, route label and whether its body was too large."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.request_id = uuid.uuid4().hex
        self.route = "unmatched"
        self.user_name: str | None = None
        self.error_code: str | None = None
        self.started = 0.0
        self.too_large = False
        self._body_seen = 0
        #: Returns a ``Set-Cookie`` value when the user's CouchDB session was refreshed.
        self.session_refresh: Callable[[], str | None] | None = None

    def write(self, data: bytes) -> None:
        """Write body bytes; the first write hands a refreshed session cookie back."""
        if not self.startedWriting and self.session_refresh is not None:
            refresh, self.session_refresh = self.session_refresh, None
            cookie = refresh()
            if cookie:
                self.responseHeaders.addRawHeader(b"Set-Cookie", cookie.encode("latin-1"))
        super().write(data)  # type: ignore[no-untyped-call]

    def _body_limit(self) -> int:
        site = getattr(self.channel, "site", None)
        return int(getattr(site, "max_upload_bytes", 2**62))

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        """Refuse to store a body whose declared length exceeds the cap."""
        if length is not None and length > self._body_limit():
            self.too_large = True
            length = 0
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        """Store body bytes until the cap; discard the rest."""
        if self.too_large:
            return
        self._body_seen += len(data)
        if self._body_seen > self._body_limit():
            self.too_large = True
            assert self.content is not None
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]


class GatewaySite(server.Site):
    """A ``Site`` producing :class:`GatewayRequest` s.

    Args:
        resource: The root resource (a :class:`FrontDoor`).
        max_upload_bytes: Largest body stored at all (bigger ones answer 413).
    """

    def __init__(self, resource: IResource, max_upload_bytes: int, **kwargs: Any) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            resource, requestFactory=GatewayRequest, **kwargs
        )
        self.max_upload_bytes = max_upload_bytes
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        """Twisted's combined log is replaced by the structured access log."""


class InFlight:
    """Counts requests being served; fires waiters when none are left."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: list[Deferred[None]] = []

    def begin(self) -> None:
        """One more request."""
        self.count += 1

    def end(self) -> None:
        """One request fewer."""
        self.count -= 1
        if self.count <= 0:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def wait_idle(self) -> Deferred[None]:
        """A Deferred firing once no request is in flight."""
        if self.count <= 0:
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

    def render(self, request: Any) -> bytes | int:
        """Serve one request."""
        request.started = self.clock()
        incoming = request.getHeader("x-request-id")
        if incoming and _REQUEST_ID.match(incoming):
            request.request_id = incoming
        request.setHeader("X-Request-Id", request.request_id)
        request.setHeader("X-Content-Type-Options", "nosniff")
        request.setHeader("Cache-Control", "no-store")
        mounted: Any = self.mounts.get(request.path)
        # Mounted resources (the WebSocket endpoint) hold connections open for hours:
        # they are logged but not counted in flight (shutdown does not wait for them).
        counted = mounted is None
        if counted:
            self.in_flight.begin()
            self.metrics.in_flight += 1
        request.notifyFinish().addBoth(self._finished, request, counted)
        try:
            check_raw_path(request.uri)
            if self.cors.apply(request):
                request.route = "preflight"
                return b""
            if request.path not in _UNLIMITED:
                self.limiter.check(request.getClientAddress().host or "unknown")
            if request.too_large:
                raise PayloadTooLarge("the request body is too large")
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

    def _finished(self, outcome: Any, request: Any, counted: bool) -> None:
        if counted:
            self.in_flight.end()
            self.metrics.in_flight -= 1
        duration = self.clock() - request.started
        self.metrics.observe_request(
            request.route, request.method.decode("ascii", "replace"), request.code, duration
        )
        if request.error_code is not None:
            self.metrics.count_error(request.route, request.error_code)
        self.access_log.record(
            request_id=request.request_id,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            route=request.route,
            status=request.code,
            duration_ms=round(duration * 1000, 2),
            bytes_sent=request.sentLength,
            client=getattr(request.getClientAddress(), "host", None),
            user=request.user_name,
            aborted=outcome is not None,
        )
        return None
