"""The one error hierarchy of Wallaby Gateway.

Every failure the gateway raises or reports is an instance of a class below, and every
class knows the HTTP status and the machine-readable ``error`` code it maps to, so the
REST layer and the WebSocket layer translate errors in exactly one place
(:func:`error_body`)::

    GatewayError                       anything the gateway reports (status 500)
    ├── CouchError                     a CouchDB request failed: .status, .error, .reason
    │   ├── BadRequest                 400
    │   ├── Unauthorized               401
    │   ├── Forbidden                  403
    │   ├── NotFound                   404
    │   ├── MethodNotAllowed           405
    │   ├── NotAcceptable              406
    │   ├── Conflict                   409
    │   ├── PreconditionFailed         412 (also "database already exists")
    │   ├── RequestEntityTooLarge      413
    │   ├── UnsupportedMediaType       415
    │   ├── RangeNotSatisfiable        416
    │   ├── ExpectationFailed          417
    │   ├── UpstreamServerError        5xx answered by CouchDB
    │   │   └── FeedProtocolError      a _changes feed line CouchDB sent is unusable
    │   ├── ServiceRefused             502 (CouchDB refused the gateway's own identity)
    │   └── CouchUnreachable           no answer at all (status 503)
    │       ├── CouchTimeout           no answer in time (status 504)
    │       ├── UpstreamTLSFailed      CouchDB's certificate refused (502, no Retry-After)
    │       ├── TooManyOpenFiles       the gateway is out of file descriptors (503): no
    │       │                           connection to CouchDB, or no temporary file, for now
    │       └── AnswerLost             a write went out, its answer did not (502, no
    │                                   Retry-After: it may have been applied)
    ├── InsufficientStorage            507 (no room left to hold a request body the
    │                                       gateway must receive before sending it on)
    └── GatewayRequestError            the gateway refuses a client's request itself
        ├── InvalidRequest             400 (schema violation, bad JSON, bad id)
        ├── AuthenticationRequired     401
        ├── AccessDenied               403 (path not exposed, origin not allowed)
        ├── RouteNotFound              404
        ├── MethodNotAllowedHere       405 (the route takes other methods)
        ├── PayloadTooLarge            413
        ├── TargetTooLong              414 (a request line longer than the gateway reads)
        ├── NotJsonBody                415 (a JSON body without application/json)
        ├── UpgradeRequired            426 (a plain request to the WebSocket endpoint)
        ├── HeadTooLarge               431 (a header line, or the whole head, too large)
        ├── TooManyFeeds               503 (the gateway's cap on upstream feeds)
        ├── ShuttingDown               503 (shutting down: /ready, new WebSockets; Retry-After)
        ├── ClientStalled              408 (read none of a streamed answer for too long:
        │                                   its connection is cut, as its headers are out)
        └── RateLimited                429 (carries retry_after)

Messages never contain credentials: classes only ever receive CouchDB's ``error`` and
``reason`` strings and the method and path of a request (never its headers or query).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AccessDenied",
    "AnswerLost",
    "AuthenticationRequired",
    "BadRequest",
    "ClientStalled",
    "Conflict",
    "CouchError",
    "CouchTimeout",
    "CouchUnreachable",
    "ExpectationFailed",
    "FeedProtocolError",
    "Forbidden",
    "GatewayError",
    "GatewayRequestError",
    "HeadTooLarge",
    "InsufficientStorage",
    "InvalidRequest",
    "MethodNotAllowed",
    "MethodNotAllowedHere",
    "NotAcceptable",
    "NotFound",
    "NotJsonBody",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RangeNotSatisfiable",
    "RateLimited",
    "RequestEntityTooLarge",
    "RouteNotFound",
    "ServiceRefused",
    "ShuttingDown",
    "TargetTooLong",
    "TooManyFeeds",
    "TooManyOpenFiles",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpgradeRequired",
    "UpstreamServerError",
    "UpstreamTLSFailed",
    "error_body",
]


class GatewayError(Exception):
    """Base of every error the gateway raises.

    Attributes:
        status: The HTTP status this error maps to.
        error: A short machine-readable code (CouchDB's vocabulary where one exists).
        reason: A human-readable explanation, safe to show to the client.
    """

    default_status: ClassVar[int] = 500
    default_error: ClassVar[str] = "internal_error"
    #: Seconds after which the client may try again (``Retry-After``); ``None``: not said.
    retry_after: float | None = None

    def __init__(
        self, reason: str = "", *, error: str | None = None, status: int | None = None
    ) -> None:
        self.status: int = status if status is not None else self.default_status
        self.error: str = error if error is not None else self.default_error
        self.reason: str = reason or self.error
        super().__init__(self.reason)

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.reason}"

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status!r}, error={self.error!r}, reason={self.reason!r})"

    def headers(self) -> dict[str, str]:
        """Extra HTTP response headers this error implies (e.g. ``Retry-After``)."""
        return {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}


class CouchError(GatewayError):
    """A request to CouchDB failed; ``status``, ``error`` and ``reason`` come from its answer."""

    default_status = 500
    default_error = "unknown_error"

    _by_status: ClassVar[dict[int, type[CouchError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        status = cls.__dict__.get("default_status")
        # Only 4xx answers map to specific classes; every 5xx answer is UpstreamServerError.
        if status is not None and status < 500 and status not in CouchError._by_status:
            CouchError._by_status[status] = cls

    @classmethod
    def from_response(cls, status: int, body: Any) -> CouchError:
        """Build the most specific error for an HTTP error answer from CouchDB.

        Args:
            status: The HTTP status CouchDB answered with.
            body: The decoded JSON body (``{"error": ..., "reason": ...}``), or anything else.

        Returns:
            An instance of the subclass registered for ``status`` (or ``UpstreamServerError``
            for 5xx, or plain ``CouchError``).
        """
        error = reason = None
        if isinstance(body, dict):
            raw_error, raw_reason = body.get("error"), body.get("reason")
            error = raw_error if isinstance(raw_error, str) else None
            reason = raw_reason if isinstance(raw_reason, str) else None
        klass = cls._by_status.get(status)
        if klass is None:
            klass = UpstreamServerError if status >= 500 else CouchError
        if klass is UpstreamServerError and error is not None:
            # The server's own code stays in the reason; the code says whose fault it is,
            # so a 502 never carries a client-mistake code such as "bad_request".
            reason = f"{error}: {reason}" if reason else error
            error = None
        return klass(reason or "", error=error, status=status)


class BadRequest(CouchError):
    """CouchDB rejected the request as malformed (400)."""

    default_status = 400
    default_error = "bad_request"


class Unauthorized(CouchError):
    """CouchDB needs (other) credentials (401)."""

    default_status = 401
    default_error = "unauthorized"


class Forbidden(CouchError):
    """The authenticated user may not do this (403)."""

    default_status = 403
    default_error = "forbidden"


class NotFound(CouchError):
    """The database, document, attachment or view does not exist (404)."""

    default_status = 404
    default_error = "not_found"


class MethodNotAllowed(CouchError):
    """CouchDB does not allow this method here (405)."""

    default_status = 405
    default_error = "method_not_allowed"


class NotAcceptable(CouchError):
    """CouchDB cannot answer in an acceptable content type (406)."""

    default_status = 406
    default_error = "not_acceptable"


class Conflict(CouchError):
    """The document was changed meanwhile: the revision given is not the current one (409)."""

    default_status = 409
    default_error = "conflict"


class PreconditionFailed(CouchError):
    """A precondition failed, e.g. the database already exists (412)."""

    default_status = 412
    default_error = "precondition_failed"


class RequestEntityTooLarge(CouchError):
    """CouchDB refused a body as too large (413)."""

    default_status = 413
    default_error = "too_large"


class UnsupportedMediaType(CouchError):
    """CouchDB refused the request's content type (415)."""

    default_status = 415
    default_error = "bad_content_type"


class RangeNotSatisfiable(CouchError):
    """The requested byte range is outside the attachment (416)."""

    default_status = 416
    default_error = "requested_range_not_satisfiable"


class ExpectationFailed(CouchError):
    """CouchDB refused a bulk request's expectations (417)."""

    default_status = 417
    default_error = "expectation_failed"


class UpstreamServerError(CouchError):
    """CouchDB answered with a 5xx status."""

    default_status = 500
    default_error = "upstream_error"


class FeedProtocolError(UpstreamServerError):
    """A ``_changes`` feed sent a line that is not valid JSON, not a change, or too long.

    It maps to 502 like every upstream fault; it registers no status of its own, so
    :meth:`CouchError.from_response` never builds it.
    """

    default_error = "bad_feed"


class ServiceRefused(CouchError):
    """CouchDB refused the gateway's own (service) identity, not the user's (502).

    The shared ``_changes`` feeds read as the service identity: one CouchDB refuses is a
    gateway misconfiguration (no ``COUCHDB_USER``, or one that may not read the
    database), which the user can do nothing about.
    """

    default_status = 502
    default_error = "service_refused"


class CouchUnreachable(CouchError):
    """CouchDB could not be reached: connection refused, reset or lost before an answer."""

    default_status = 503
    default_error = "upstream_unavailable"
    retry_after: float | None = 5  # none for a write that may have been applied


class AnswerLost(CouchUnreachable):
    """A write reached CouchDB (or part of it did) but its answer never came (502).

    Whether it was applied is unknown, so it carries no ``Retry-After``: a client that
    simply sent it again could store a document twice (``POST`` without an ``_id``).
    """

    default_status = 502
    default_error = "upstream_answer_lost"
    retry_after = None


class UpstreamTLSFailed(CouchUnreachable):
    """The TLS handshake with CouchDB failed: its certificate (or protocol) was refused (502).

    Nothing was sent. Waiting does not mend a certificate, so no ``Retry-After``; the
    shared feeds keep retrying, for an operator may mend it.
    """

    default_status = 502
    default_error = "upstream_tls_failed"
    retry_after = None


class TooManyOpenFiles(CouchUnreachable):
    """The gateway has no file descriptor left for a connection or a temporary file (503).

    A shortage of the gateway's own, not of CouchDB's: its reason says so, so that an
    operator looks at the gateway's descriptor limit, not at a healthy CouchDB.
    """

    default_status = 503
    default_error = "too_many_open_files"


class CouchTimeout(CouchUnreachable):
    """CouchDB did not answer within the request's timeout."""

    default_status = 504
    default_error = "upstream_timeout"


class GatewayRequestError(GatewayError):
    """The gateway refuses a client's request on its own, without asking CouchDB."""

    default_status = 400
    default_error = "bad_request"


class MethodNotAllowedHere(GatewayRequestError):
    """The route exists but takes other methods (405)."""

    default_status = 405
    default_error = "method_not_allowed"


class NotJsonBody(GatewayRequestError):
    """A body the route reads as JSON came with another ``Content-Type`` (415)."""

    default_status = 415
    default_error = "bad_content_type"


class InvalidRequest(GatewayRequestError):
    """The request does not match the API contract (400)."""

    default_status = 400
    default_error = "bad_request"


class AuthenticationRequired(GatewayRequestError):
    """The request carries no (valid) credentials (401)."""

    default_status = 401
    default_error = "unauthorized"


class AccessDenied(GatewayRequestError):
    """The gateway never exposes this resource to this client (403)."""

    default_status = 403
    default_error = "forbidden"


class RouteNotFound(GatewayRequestError):
    """No API route matches the path (404)."""

    default_status = 404
    default_error = "not_found"


class PayloadTooLarge(GatewayRequestError):
    """The request body exceeds the configured limit (413)."""

    default_status = 413
    default_error = "too_large"


class TargetTooLong(GatewayRequestError):
    """The request line is longer than the gateway reads (414, RFC 9112 section 3)."""

    default_status = 414
    default_error = "uri_too_long"


class HeadTooLarge(GatewayRequestError):
    """A header line, or the head as a whole, is larger than the gateway reads (431)."""

    default_status = 431
    default_error = "header_fields_too_large"


class UpgradeRequired(GatewayRequestError):
    """A request to the WebSocket endpoint that does not ask for a WebSocket (426)."""

    default_status = 426
    default_error = "upgrade_required"


class TooManyFeeds(GatewayRequestError):
    """A subscription would open an upstream feed beyond the gateway's cap (503)."""

    default_status = 503
    default_error = "too_many_feeds"


class ShuttingDown(GatewayRequestError):
    """The gateway is shutting down: not ready, and it opens no new WebSocket (503).

    Another instance (or this one, restarted) takes the connection shortly.
    """

    default_status = 503
    default_error = "shutting_down"
    retry_after: float | None = 5  # none for a write that may have been applied


class InsufficientStorage(GatewayError):
    """A request body could not be held: the temporary directory is full (507).

    Bodies the gateway must receive whole before sending them on (JSON bodies over
    100 kB, chunked attachment uploads, any upload to pouchdb-server) go to temporary
    files. Neither the client's fault nor CouchDB's: nothing was sent upstream.
    """

    default_status = 507
    default_error = "insufficient_storage"
    retry_after = 30


class ClientStalled(GatewayRequestError):
    """The client took none of a streamed answer for too long (408).

    Raised once the answer's headers are out, so it is never sent: the connection is cut.
    """

    default_status = 408
    default_error = "client_stalled"


class RateLimited(GatewayRequestError):
    """The client sent too many requests (429)."""

    default_status = 429
    default_error = "too_many_requests"

    def __init__(self, reason: str = "", *, retry_after: float = 1.0) -> None:
        super().__init__(reason or "too many requests")
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """Tell clients when to try again."""
        assert self.retry_after is not None  # set by __init__
        return {"Retry-After": str(max(1, round(self.retry_after + 0.4999)))}


def error_body(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Map any exception to the gateway's JSON error envelope.

    Args:
        exc: The exception to report. Anything that is not a ``GatewayError`` is an
            internal error whose details are not disclosed.

    Returns:
        ``(status, body, headers)`` where body is
        ``{"error": ..., "reason": ..., "status": ...}``.
    """
    if isinstance(exc, GatewayError):
        status, error, reason, headers = exc.status, exc.error, exc.reason, exc.headers()
        if isinstance(exc, UpstreamServerError):
            # CouchDB's 500s are the gateway's 502: the fault is upstream.
            status = 502
    else:
        status, error, reason, headers = 500, "internal_error", "internal server error", {}
    return status, {"error": error, "reason": reason, "status": status}, headers
