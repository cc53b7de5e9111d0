"""The gateway's HTTP/1.1 channel: a deadline for each head, and heads it cannot read answered.

:class:`GatewayChannel` drops a connection whose request head is not in within the
site's ``header_timeout``, answers a head Twisted cannot read with the error envelope
(414, 431 or 400) and closes, and serves an absolute-form target as its origin form.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server

from gateway.errors import GatewayError, HeadTooLarge, InvalidRequest, TargetTooLong
from gateway.http.request_target import origin_form
from gateway.http.responses import refusal_before_request

__all__ = ["SERVER_NAME", "GatewayChannel"]

#: The ``Server`` header: Twisted's and Autobahn's would tell their versions to anyone.
SERVER_NAME = b"Wallaby-Gateway"


@runtime_checkable
class _RefusalRecorder(Protocol):
    """The site's resource, if it logs and counts the heads the channel refused.

    That is :class:`~gateway.http.site.FrontDoor`; named by what it does, so that this
    module does not import the site's (which imports this one).
    """

    def record_refusal(self, error: GatewayError, request_id: str, peer: Any,
                       method: bytes) -> None: ...


class GatewayChannel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel: a deadline for each head, and heads it cannot read answered.

    The headers must be in within the site's ``header_timeout``, however steadily they
    trickle: the idle timeout restarts on every byte, and counted from the request line
    (when Twisted makes the request) the deadline would let a request line trickled a
    byte at a time (up to 16 KiB of it) hold its connection for days.

    A head Twisted cannot read gets the error envelope, like every other error, and the
    connection is closed: a request line over 16 KiB is 414 (Twisted closed the
    connection without a word), a header line over 16 KiB or a head over 16 KiB or 500
    fields is 431, a malformed one 400 (Twisted wrote a bare status line). An
    absolute-form target (``GET http://host/path``) is served as its origin form.

    Attributes:
        head_deadline: Drops the connection if the head of the request begun is not in
            in time; met once :class:`~gateway.http.request.GatewayRequest` has all its
            headers.
        target_authority: The authority of the current request's absolute-form target,
            which replaces its ``Host`` (RFC 9112 section 3.2.2).
    """

    head_deadline: IDelayedCall | None = None
    target_authority: bytes | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        """Bytes in; the first of a request starts its deadline."""
        # RFC 9112 2.2: empty lines before a request line are ignored, so they start
        # nothing (Twisted replays such a CRLF, left after a body, once a request ends).
        if not self.requests and self.head_deadline is None and data.lstrip(b"\r\n"):
            timeout = getattr(getattr(self, "site", None), "header_timeout", None)
            if timeout:
                self.head_deadline = self.callLater(  # type: ignore[no-untyped-call]
                    timeout, self._head_too_slow)
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
        """A line of a head; an absolute-form request line becomes the origin form."""
        request_line = not self._in_headers()
        super().lineReceived(line)  # type: ignore[no-untyped-call]
        target = getattr(self, "_path", None)
        if request_line and target is not None:
            absolute = origin_form(target)
            if absolute is not None:
                self._path, self.target_authority = absolute

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
        """A line over 16 KiB: 414 for a request line, 431 for a header line."""
        self._refuse_head(HeadTooLarge("a header line is longer than 16 KiB")
                          if self._in_headers()
                          else TargetTooLong("the request line is longer than 16 KiB"))

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802 - Twisted's name
        """Twisted found the head too large or malformed, or a chunked body malformed."""
        if not self.line_mode:  # reading a body
            self._refuse_head(InvalidRequest(
                "the request's body is not valid chunked transfer coding (RFC 9112 7.1)"))
        elif self._receivedHeaderSize > self.totalHeadersSize \
                or self._receivedHeaderCount > self.maxHeaders:
            self._refuse_head(HeadTooLarge(
                f"the request's head is larger than {self.totalHeadersSize} bytes or "
                f"{self.maxHeaders} fields"))
        else:
            self._refuse_head(InvalidRequest(
                "the request's head is not valid HTTP/1.1 (RFC 9112): a malformed request "
                "line, header field or transfer coding"))

    def _in_headers(self) -> bool:
        """A request line was read and its headers are still coming."""
        return getattr(self, "_command", None) is not None

    def _refuse_head(self, error: GatewayError) -> None:
        """Answer ``error`` in place of the request being read, log it, and close."""
        self.head_complete()
        if self.transport is None:
            return
        if not any(getattr(request, "startedWriting", False) for request in self.requests):
            # The request being read, if it was made (an upload dispatched at its headers
            # has its access line too): the answer names its id.
            current = self.requests[-1] if self.requests else None
            request_id = str(getattr(current, "request_id", "") or os.urandom(16).hex())
            self.transport.write(refusal_before_request(
                error, request_id,
                http.datetimeToString(), SERVER_NAME))  # type: ignore[no-untyped-call]
            front = getattr(getattr(self, "site", None), "resource", None)
            if getattr(current, "access_logged", False):  # logged as it ends: as refused
                current.setResponseCode(error.status)  # type: ignore[union-attr]
                current.answered_by_channel = True  # type: ignore[union-attr]
                current.error_code = error.error  # type: ignore[union-attr]
            elif isinstance(front, _RefusalRecorder):
                front.record_refusal(error, request_id, self.transport.getPeer(),
                                     getattr(self, "_command", None) or b"-")
        self.loseConnection()  # type: ignore[no-untyped-call]

    def head_complete(self) -> None:
        """The request's headers are all in: its deadline is met."""
        deadline, self.head_deadline = self.head_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Gone: no deadline outlives the connection."""
        self.head_complete()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


def _gateway_channel(site: server.Site) -> Any:
    """What ``Site.protocol`` makes: Twisted's protocol switcher around our channel."""
    return http._GenericHTTPChannelProtocol(GatewayChannel())  # type: ignore[no-untyped-call]
