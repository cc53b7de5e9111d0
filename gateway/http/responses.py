"""Writing JSON answers, and the one place errors become HTTP responses."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from gateway import deep_json
from gateway.errors import GatewayError, error_body

__all__ = [
    "encode_json", "json_response", "refusal_before_request", "render_error", "write_location",
]

_log = Logger(namespace="gateway.http")


def json_response(
    request: Any, status: int, body: Any, headers: Mapping[str, str] | None = None,
    *, encoded: bytes | None = None,
) -> bytes:
    """Set status and headers for a JSON answer and return its encoded body.

    Args:
        request: The request to answer.
        status: HTTP status.
        body: The answer, encoded here unless ``encoded`` is given.
        headers: Extra response headers.
        encoded: ``body`` already encoded (CouchDB's own bytes, relayed as they came).
    """
    request.setResponseCode(status, _PHRASES.get(status))
    request.setHeader("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    data = encoded if encoded is not None else encode_json(body)
    # A known length: no chunked framing, and the response can leave in one send.
    request.setHeader("Content-Length", str(len(data)))
    return data


def encode_json(body: Any) -> bytes:
    """A JSON answer's bytes, as :func:`json_response` sends them (compact)."""
    return deep_json.dumps(body, separators=(",", ":")).encode()


def write_location(status: int, body: Any, url: Callable[[str], str]) -> dict[str, str]:
    """The ``Location`` header of a write's answer, as CouchDB names what it wrote.

    CouchDB sends it with a document created or updated by ``POST`` or ``PUT`` and with
    an uploaded attachment, naming its own URL; the gateway names its own, relative.
    None for an error, nor for a ``batch=ok`` answer (no revision: nothing written yet).

    Args:
        status: The answer's status.
        body: The answer (``{"ok", "id", "rev"}`` when written).
        url: The gateway's path of what was written, given the document's id.
    """
    written = isinstance(body, dict) and isinstance(body.get("rev"), str)
    if not 200 <= status < 300 or not written or not isinstance(body.get("id"), str):
        return {}
    return {"Location": url(body["id"])}


#: Reason phrases Twisted does not know (it would send "Unknown Status").
_PHRASES: dict[int, bytes] = {426: b"Upgrade Required", 429: b"Too Many Requests",
                               431: b"Request Header Fields Too Large"}


def render_error(request: Any, exc: BaseException) -> bytes:
    """Answer with the error envelope for ``exc`` (through :func:`error_body`, once).

    Unexpected exceptions are logged with their traceback and answered as an opaque 500.
    """
    if not isinstance(exc, GatewayError):
        # Called from an error handler, not an ``except`` block: the failure is explicit.
        _log.failure(
            "unexpected error serving {path} (request {request_id})",
            failure=Failure(exc),  # type: ignore[no-untyped-call]
            path=_path(request), request_id=getattr(request, "request_id", None))
    status, body, headers = error_body(exc)
    setattr(request, "error_code", body["error"])  # noqa: B010 - read by the access log
    # A body-less error must not inherit headers of a partial success (e.g. ETag).
    for name in (b"etag", b"content-length", b"content-disposition"):
        request.responseHeaders.removeHeader(name)
    return json_response(request, status, body, headers)


def refusal_before_request(exc: GatewayError, request_id: str, date: bytes,
                           server_name: bytes) -> bytes:
    """The whole HTTP/1.1 answer to a head refused before it made a request.

    The channel answers a request line or headers it cannot parse (too long, malformed)
    itself, with no request object or resource involved; the answer is the same error
    envelope with the headers every other answer carries, and closes the connection.

    Args:
        exc: What was wrong with the head.
        request_id: The ``X-Request-Id`` to send.
        date: The ``Date`` header's value (an HTTP-date).
        server_name: The ``Server`` header's value.
    """
    status, body, headers = error_body(exc)
    data = json.dumps(body, separators=(",", ":")).encode()
    phrase = _PHRASES.get(status) or RESPONSES.get(status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (status, phrase),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(data),
        b"Date: " + date,
        b"Server: " + server_name,
        b"X-Request-Id: " + request_id.encode("ascii"),
        b"X-Content-Type-Options: nosniff",
        b"Cache-Control: no-store",
        b"Connection: close",
        *(f"{name}: {value}".encode("latin-1") for name, value in headers.items()),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def _path(request: Any) -> str:
    return bytes(request.path).decode("latin-1")
