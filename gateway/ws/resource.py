"""The Twisted Web resource of the WebSocket endpoint: each connection gets its request.

Autobahn's ``WebSocketResource`` takes the socket over from the HTTP request that asked
for the upgrade, and that request never finishes: its ``notifyFinish()`` Deferreds
never fire (no access-log line is written), and the request, its HTTP channel and those
Deferreds stay in a reference cycle that only a full collection of the cycle collector
frees (see :mod:`gateway.gc_watch`). :class:`UpgradingResource` gives the connection
its request, and the connection ends the request as soon as the handshake is decided:
when it opens (status 101), or when a refused handshake's socket closes.

A refused handshake is answered as the REST API answers an error
(:func:`refusal_response`): the error envelope rendered by
:func:`gateway.http.responses.render_error`, with the headers the front door put on the
upgrade request (``X-Request-Id``, CORS, ``Vary``) and the error's own (``Retry-After``),
instead of the bare status line Autobahn writes. What Autobahn is told meanwhile, a
``ConnectionDeny``, comes from :func:`as_connection_deny`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowedHere,
    UpgradeRequired,
)
from gateway.http.responses import render_error

__all__ = [
    "UpgradingResource",
    "as_connection_deny",
    "malformed_handshake",
    "refusal_response",
    "served_protocol",
]

_log = Logger(namespace="gateway.ws.resource")


def served_protocol(transport: Any) -> Any:
    """The protocol now serving a socket Autobahn took over (wrapped or not).

    The same three cases as ``WebSocketResource.render``.
    """
    if isinstance(transport, ProtocolWrapper):
        return transport.wrappedProtocol
    protocol = getattr(transport, "protocol", None)
    if isinstance(protocol, ProtocolWrapper):
        return protocol.wrappedProtocol
    return protocol


class UpgradingResource(WebSocketResource):  # type: ignore[misc,unused-ignore]
    """A ``WebSocketResource`` that hands its request to the connection it starts."""

    def render(self, request: Any) -> Any:
        """Upgrade the request's socket and hand the request to its new connection.

        A request that does not ask for a WebSocket gets the gateway's error envelope
        (426), not Autobahn's status page (which names the library and its version).
        While Autobahn takes the socket over (and may already refuse the handshake, e.g.
        a malformed one or a foreign ``Origin``), the request is the factory's
        ``upgrading`` one: the new connection answers a refusal with its headers.
        """
        if (request.getHeader("upgrade") or "").strip().lower() != "websocket":
            request.setHeader("Upgrade", "websocket")
            request.setHeader("Connection", "Upgrade")  # RFC 9110 7.8: with Upgrade
            return render_error(request, UpgradeRequired(
                "this endpoint speaks WebSocket only (see docs/websocket.md)"))
        transport = request.channel.transport
        factory = self._factory
        factory.upgrading = request
        try:
            result = super().render(request)  # type: ignore[no-untyped-call,unused-ignore]
        finally:
            factory.upgrading = None
        if transport is not None and request.channel.transport is None:
            connection = served_protocol(transport)
            if hasattr(connection, "adopt_upgrade_request"):
                connection.adopt_upgrade_request(request)
        return result


class _Answer:
    """What :func:`render_error` needs of a request, for a socket without one.

    A socket served without Twisted Web: the factory listening on its own port.
    """

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.code = 200
        self.code_message = b"OK"
        self.responseHeaders = Headers()
        self.error_code: str | None = None
        self.sentLength = 0

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:  # noqa: N802
        self.code = code
        self.code_message = message or RESPONSES.get(code, b"Unknown Status")

    def setHeader(self, name: str | bytes, value: str | bytes) -> None:  # noqa: N802
        self.responseHeaders.setRawHeaders(name, [value])


def refusal_response(
    request: Any, exc: BaseException, headers: Sequence[tuple[str, str]] = (),
    *, path: bytes = b"/api/v1/changes",
) -> tuple[int, bytes]:
    """The HTTP answer to a refused handshake: the REST layer's error response for ``exc``.

    Args:
        request: The upgrade's HTTP request (its front-door headers are kept, its status
            and error code are set for the access log), or ``None``.
        exc: Why the handshake is refused (anything else than a ``GatewayError`` is an
            opaque 500, logged with its traceback, as in the REST layer).
        headers: More headers (e.g. ``Sec-WebSocket-Version`` for an unsupported version).
        path: The request's path, when there is no request (for the log of a 500).

    Returns:
        ``(status, the bytes of the whole response)``; the connection is closed after it
        (``Connection: close``).
    """
    answer: Any = request if request is not None else _Answer(path)
    body = render_error(answer, exc)
    for name, value in headers:
        answer.setHeader(name, value)
    answer.setHeader("Connection", "close")
    answer.sentLength = len(body)
    lines = [b"HTTP/1.1 %d %s" % (answer.code, answer.code_message)]
    for name, values in answer.responseHeaders.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    return int(answer.code), b"\r\n".join(lines) + b"\r\n\r\n" + body


#: Autobahn's reasons for refusing a malformed handshake (by how they start), and what the
#: client is told instead: many of Autobahn's echo the request (its line with the query,
#: which may hold ``?token=``, or header values), which an error never repeats.
_MALFORMED: tuple[tuple[str, str], ...] = (
    ("HTTP Sec-WebSocket-Key header missing", "Sec-WebSocket-Key header missing"),
    ("HTTP Sec-WebSocket-Key header appears", "Sec-WebSocket-Key header repeated"),
    ("bad Sec-WebSocket-Key", "malformed Sec-WebSocket-Key header"),
    ("bad character", "malformed Sec-WebSocket-Key header"),
    ("WebSocket connection denied - Hixie76", "Sec-WebSocket-Version header missing"),
    ("HTTP Sec-WebSocket-Version header appears", "Sec-WebSocket-Version header repeated"),
    ("could not parse HTTP Sec-WebSocket-Version", "malformed Sec-WebSocket-Version header"),
    ("WebSocket version", "unsupported Sec-WebSocket-Version"),
    ("HTTP Connection header", 'the Connection header must include "upgrade"'),
    ("HTTP Upgrade", 'the Upgrade header must include "websocket"'),
    ("HTTP Host header", "one Host header required"),
    ("HTTP Origin header", "malformed Origin header"),
    ("duplicate protocol", "Sec-WebSocket-Protocol names a protocol twice"),
    ("HTTP requested resource contains a fragment", "the request target has a fragment"),
)


def malformed_handshake(code: int, reason: str) -> GatewayError:
    """The gateway's error for a handshake Autobahn refuses as malformed.

    Args:
        code: Autobahn's status (400; 405 for a method other than GET).
        reason: Autobahn's reason (never shown: it may echo the request).
    """
    if code == 405:
        # As the REST layer answers a method a route does not serve.
        return MethodNotAllowedHere("method not allowed on this route")
    what = next((said for start, said in _MALFORMED if reason.startswith(start)), None)
    detail = f"not a valid WebSocket handshake: {what}" if what else \
        "not a valid WebSocket handshake"
    detail += " (RFC 6455, version 13; see docs/websocket.md)"
    if 400 <= code < 500:
        return InvalidRequest(detail, status=code)
    return GatewayError(detail, status=code)


def as_connection_deny(failure: Failure) -> tuple[GatewayError, Failure]:
    """What a handshake's checks raised, as the REST API would answer it and as Autobahn.

    Autobahn gets a ``ConnectionDeny`` (anything else it would answer with the
    exception's text). An unexpected exception is logged here, with its traceback,
    and refused as an opaque 500.

    Args:
        failure: Why the checks refused (its traceback is still there, for the log).

    Returns:
        The error to answer with (:func:`refusal_response`), and the ``ConnectionDeny``
        failure for Autobahn.
    """
    exc = failure.value
    if not isinstance(exc, GatewayError):
        _log.failure("websocket handshake check failed", failure, LogLevel.error)
        exc = GatewayError("internal server error")  # as error_body words it
    return exc, Failure(ConnectionDeny(  # type: ignore[no-untyped-call,unused-ignore]
        exc.status, "refused"))
