"""The gateway's HTTP request: its body capped or streamed, its end told to the access log.

:class:`GatewayRequest` caps request bodies while they arrive (Twisted spools bodies
beyond 100 kB to a temporary file, so memory stays flat; beyond the cap the bytes are
discarded and the request is answered 413), and streams the bodies of attachment
uploads instead of spooling them (see :meth:`GatewayRequest.gotLength`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any, AnyStr

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import _IdentityTransferDecoder

from gateway.eager_write import flush_now
from gateway.errors import PayloadTooLarge, ShuttingDown
from gateway.http.responses import render_error
from gateway.http.streaming import BodyPipe, close_quietly, narrow, widen

__all__ = [
    "CLIENT_CLOSED_REQUEST", "DRAIN_SECONDS", "SHUTDOWN_CUT", "GatewayRequest", "logged_status",
    "shutdown_cut",
]

#: Seconds the rest of a body answered before it arrived is read (and dropped) at most.
DRAIN_SECONDS = 5.0

#: Why a request still served when the shutdown's grace ran out was answered 503.
SHUTDOWN_CUT = ("the gateway is shutting down, and this request did not finish within "
                "its grace (WALLABY_SHUTDOWN_GRACE); send it again")

#: Routes whose method is not GET but which only read (their repeat changes nothing).
_READING_ROUTES = frozenset({"login", "allDocsKeys", "bulkGet", "queryViewKeys", "find"})


def shutdown_cut(request: Any) -> ShuttingDown:
    """The answer to a request the end of the shutdown's grace cut, before its head left.

    A write whose whole body had arrived may have reached CouchDB, which then applies it
    though its answer is lost: like :class:`~gateway.errors.AnswerLost`, that answer
    carries no ``Retry-After`` and says to read before writing again (a ``POST`` sent
    twice stores two documents). A read, or a write whose body was still arriving (CouchDB
    applies no cut upload), may simply be sent again.
    """
    method = getattr(request, "method", b"GET")
    if (method in (b"GET", b"HEAD", b"OPTIONS")
            or getattr(request, "route", "") in _READING_ROUTES
            or not getattr(request, "_body_done", True)):
        return ShuttingDown(SHUTDOWN_CUT)
    unsure = ShuttingDown(
        "the gateway is shutting down, and this request did not finish within its grace "
        "(WALLABY_SHUTDOWN_GRACE): it may have been applied; read before writing again")
    unsure.retry_after = None
    return unsure

#: The status logged and counted for a request whose client left before any answer
#: was written (nginx's 499): no status was sent, and Twisted's default 200 would count
#: a cut upload or an abandoned read as a success.
CLIENT_CLOSED_REQUEST = 499


class GatewayRequest(server.Request):
    """A request that knows its id, route label and whether its body was too large."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.request_id = os.urandom(16).hex()  # as random as uuid4().hex, at a quarter of its cost
        self.route = "unmatched"
        self.user_name: str | None = None
        self.error_code: str | None = None
        #: The client's address (behind trusted proxies: from X-Forwarded-For).
        self.client_host = "unknown"
        #: What the rate limit and the failed-login guard count it as (IPv6: its prefix).
        self.client_key = "unknown"
        #: The connection was lost before the answer was complete.
        self.client_gone = False
        #: It was lost before the answer's head was written: no status reached the client.
        self.unanswered = False
        #: The channel answered in its place (a body it could not read), not the request.
        self.answered_by_channel = False
        #: The gateway cut the connection after the headers (a stream that broke off).
        self.cut_short = False
        #: The route handler's Deferred while it runs (see :meth:`stop_for_shutdown`).
        self.handler: Deferred[Any] | None = None
        #: The shutdown's grace ran out while this request was being served.
        self.shutting_down = False
        self.started = 0.0
        #: The front door logs this request when it finishes (it has been rendered).
        self.access_logged = False
        self.too_large = False
        #: Why the body could not be stored (its temporary file), if it could not.
        self.spool_error: OSError | None = None
        self._body_seen = 0
        #: Adds the user's CouchDB session to the head when it was refreshed (the cookie,
        #: or a bearer client's token: :func:`~gateway.http.session.session_refresh`).
        self.session_refresh: Callable[[GatewayRequest], None] | None = None
        #: The body of an upload dispatched before its body arrived (see gotLength).
        self.body_pipe: BodyPipe | None = None
        self._early = False  # to be dispatched from gotLength
        self._continue_due = False  # the client waits for 100 Continue, not sent yet
        self._dispatched = False
        self._body_done = True  # the whole body arrived (or none will be read)
        self._finish_pending = False  # answered; finish once the body is drained
        self._widened: Any = None
        self._idle_timeout: Any = None  # the channel's, while a splice reads the body
        self._limit: int | None = None
        self._drain_deadline: Any = None  # cuts off a body still sent after its answer

    def stop_for_shutdown(self) -> None:
        """The shutdown's grace is over and this request is still being served: end it.

        Its head not sent yet, it is answered ``503 shutting_down`` (its route handler
        is cancelled, which also cancels its call to CouchDB, and its error handler
        answers); otherwise its connection is cut, and its access line says
        ``shutting_down``. Either way it is not left to the reactor's stop, which closed
        the connections with no answer (the access line said 200), or failed the call to
        CouchDB first (``503 upstream_unavailable``, blaming CouchDB).
        """
        if self.finished or self._disconnected:
            return
        self.shutting_down = True
        if not self.startedWriting:
            handler = self.handler
            if handler is not None and not handler.called:
                handler.cancel()
            if not self.startedWriting and not self.finished and not self._disconnected:
                # Nothing of a handler's waits on it (a body still arriving): answer here.
                self.write(render_error(self, shutdown_cut(self)))
                self.finish()
            return
        self.error_code = "shutting_down"
        self.cut_short = True
        transport = getattr(self.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def getHeader(self, key: AnyStr) -> AnyStr | None:  # noqa: N802
        """A request header's last value; asked by a text name, as ISO-8859-1 text.

        Twisted decodes it as UTF-8, and a byte 0x80-0xFF (``obs-text``, RFC 9110 5.5:
        a browser sends "é" as 0xE9) was a ``UnicodeDecodeError`` and a 500 wherever a
        header is read. In ISO-8859-1 every byte is a character: such a value reaches
        the checks that ignore or refuse it. Headers relayed upstream are sent as the
        client's bytes (``requestHeaders``), not as this text.
        """
        if isinstance(key, str):
            values = self.requestHeaders.getRawHeaders(key.encode("latin-1"))
            return values[-1].decode("latin-1") if values else None
        return super().getHeader(key)

    def write(self, data: bytes) -> None:
        """Write body bytes; the first write sends the head, with a refreshed session.

        An answer that comes before a client waiting for ``100 Continue`` was told to
        send its body ends the connection, and says so (RFC 9110 10.1.1).
        """
        if not self.startedWriting:
            pipe = self.body_pipe
            if self._continue_due or (pipe is not None and pipe.length is None
                                      and not self._body_done):
                # Answered before the body was asked for, or before the end of a
                # chunked one (of no known length to drain): this answer is the last.
                self._refused_before_body()
            channel: Any = self.channel
            site = getattr(channel, "site", None)
            if channel is not None and getattr(site, "closing_connections", False):
                channel.persistent = False  # draining: the next request goes elsewhere
            if channel is not None and not channel.persistent:
                self.responseHeaders.setRawHeaders(b"connection", [b"close"])
            if self.session_refresh is not None:
                refresh, self.session_refresh = self.session_refresh, None
                refresh(self)
        super().write(data)  # type: ignore[no-untyped-call]

    def _refused_before_body(self) -> None:
        """Answered before the body was taken: close once answered.

        The client still waits for leave to send its body, which it will not get, or
        sends a chunked body of no known length, which is not read to its end; so
        nothing more comes on this connection.
        """
        self._continue_due = False
        self._body_done = True
        channel: Any = self.channel
        if channel is not None:
            channel.persistent = False
        if self.body_pipe is not None:
            self.body_pipe.discard()

    def _body_limit(self) -> int:
        """The largest body this request may send: an attachment's, or a JSON body's.

        Decided from the request line as soon as the headers are in (the body is
        counted against it as it arrives), so that nothing but an attachment upload (a
        ``PUT``, whose handler runs at the headers) lets a client, authenticated or not,
        make the gateway store more than a JSON body.
        """
        if self._limit is None:
            site = getattr(self.channel, "site", None)
            limit = int(getattr(site, "max_upload_bytes", 2**62))
            line = self._request_line()
            pattern = getattr(site, "streamed_uploads", None)
            if line is None or line[0] != b"PUT" or pattern is None \
                    or not pattern.match(line[1]):
                limit = min(limit, int(getattr(site, "max_json_bytes", limit)))
            self._limit = limit
        return self._limit

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        """Refuse to store a body whose declared length exceeds the cap; stream uploads.

        Twisted dispatches a request once its whole body is stored. An attachment
        ``PUT`` (:data:`~gateway.http.site.STREAMED_UPLOADS`) is dispatched here
        instead, as soon as its headers are in: its handler authenticates the caller and
        then starts the upstream request with :attr:`body_pipe` as body, which
        :meth:`handleContentChunk` feeds. Any request whose declared length is over its
        cap (:meth:`_body_limit`) is dispatched here too, and answered 413 at once. A
        chunked one (no ``Content-Length``) is spooled by its handler, once the caller
        is known, and cut off with 413 when it outgrows the cap: nobody can make the
        gateway store a body before saying who they are.

        A client that waits for ``100 Continue`` is told so only when the upstream
        request asks for the body, after the caller was authenticated and the upstream
        reached (RFC 9110 10.1.1: a refusal costs it no body). Whether the caller may
        write there is CouchDB's to say, once that request has begun.

        An answer given before the body has arrived (an error) is written at once; the
        request is finished only once the rest of the body has been read and dropped,
        so the connection stays in step and alive — unless the client waits for
        ``100 Continue``: then it is not sent, and the connection is closed after the
        answer. The channel's second dispatch, once the body is complete, only ends
        the pipe (:meth:`requestReceived`).
        """
        channel: Any = self.channel
        head_in = getattr(channel, "head_complete", None)  # GatewayChannel's deadline
        if head_in is not None:
            head_in()
        authority = getattr(channel, "target_authority", None)
        if authority is not None:  # RFC 9112 3.2.2: the target's authority, not Host
            channel.target_authority = None
            self.requestHeaders.setRawHeaders(b"host", [authority])
        too_large = length is not None and length > self._body_limit()
        self.too_large = self.too_large or too_large
        line = self._request_line()
        pattern = getattr(getattr(channel, "site", None), "streamed_uploads", None)
        # Over the cap, any request is answered at its headers (a client waiting for
        # 100 Continue is refused without being invited to send, and the connection
        # closed); within it, only attachment PUTs are dispatched before their body.
        if line is None or channel.transport is None \
                or (not too_large and (length == 0 or line[0] != b"PUT" or pattern is None
                                      or not pattern.match(line[1]))):
            try:
                super().gotLength(0 if too_large else length)  # type: ignore[no-untyped-call]
            except OSError as exc:  # no temporary file for a body over 100 kB
                self._cannot_spool(exc)
            return
        self.content = io.BytesIO()  # stays empty: the body is never stored
        self._early, self._body_done = True, False
        expects = self.requestHeaders.getRawHeaders(b"expect")
        self.requestHeaders.removeHeader(b"expect")  # answered here, not by the channel
        if too_large:
            if expects:  # it sends nothing until told to: refuse and close
                channel.persistent = False
                self._body_done = True
        else:
            self._continue_due = bool(expects) and line[2] == b"HTTP/1.1"
            self._widened = widen(channel.transport)
            self.body_pipe = BodyPipe(length, channel.transport,
                                      source=self if length is not None else None,
                                      on_start=self._send_continue)
        self.requestReceived(*line)

    def _request_line(self) -> tuple[bytes, bytes, bytes] | None:
        """Method, target and version, as the channel parsed them before the headers."""
        channel: Any = self.channel
        command = getattr(channel, "_command", None)
        target = getattr(channel, "_path", None)
        version = getattr(channel, "_version", None)
        if command is None or target is None or version is None:
            return None
        return command, target, version

    def _outgrown(self, pipe: BodyPipe) -> None:
        """A chunked upload passed the cap: answer 413 and close (the rest is not read)."""
        self.too_large = True
        self._body_done = True
        channel: Any = self.channel
        if channel is not None:
            channel.persistent = False
        pipe.abort(Failure(PayloadTooLarge(  # type: ignore[no-untyped-call]
            f"the attachment is larger than {self._body_limit()} bytes")))

    def _send_continue(self) -> None:
        """The upstream request wants the body: a client waiting for leave may send it."""
        transport = getattr(self.channel, "transport", None)
        if self._continue_due and not self.startedWriting and transport is not None:
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._continue_due = False

    def _body_decoder(self) -> Any:
        """The channel's parser of this request's identity body, if it is parsing one."""
        decoder = getattr(self.channel, "_transferDecoder", None)
        if (
            isinstance(decoder, _IdentityTransferDecoder)
            and decoder.dataCallback == self.handleContentChunk
        ):
            return decoder
        return None

    def take_body(self) -> int:
        """Leave the rest of a streamed upload's body in the socket to a splice.

        Returns:
            Body bytes the client has yet to send, which the channel's parser will skip
            (:meth:`body_taken`); 0 when it cannot (it holds unparsed bytes, is parsing,
            or this is not a body it counts down). The idle timeout is off meanwhile.
        """
        channel: Any = self.channel
        decoder = self._body_decoder()
        if (
            decoder is None or not decoder.contentLength or self._body_done
            or channel._buffer or channel._busyReceiving or channel.line_mode
        ):
            return 0
        self._idle_timeout = channel.setTimeout(None)
        return int(decoder.contentLength)

    def body_taken(self, count: int) -> None:
        """``count`` bytes of the body were read from the socket by the splice: skip them.

        Completed that way, the body ends as if the channel had read it (its second
        dispatch, :meth:`requestReceived`): the connection stays in step, keep-alive
        goes on. Short of the end, the channel reads the rest itself.
        """
        channel: Any = self.channel
        decoder = self._body_decoder()
        if decoder is None:  # the connection is gone
            return
        channel.setTimeout(self._idle_timeout)
        decoder.contentLength -= count
        if not decoder.contentLength:
            decoder.dataReceived(b"")  # reaches its end: the channel's allContentReceived

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        """Dispatch; for an early-dispatched upload, the second call ends its body."""
        if self._dispatched:
            self._body_done = True
            self._stop_draining()
            narrow(self._widened)
            if self.body_pipe is not None:
                self.body_pipe.end()
            if self._finish_pending:
                super().finish()  # type: ignore[no-untyped-call]
            return
        self._dispatched = self._early
        if self.content is not None and not isinstance(self.content, io.BytesIO) \
                and self.spool_error is None:
            try:
                self.content.flush()  # Twisted's seek(0) would, outside any handler
            except OSError as exc:
                self._cannot_spool(exc)
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def _handleStar(self) -> None:  # noqa: N802 - Twisted's name
        """``OPTIONS *`` goes through the front door, like every other target."""
        try:
            site: Any = self.site
            self.render(site.getResourceFor(self))  # type: ignore[no-untyped-call]
        except BaseException:
            self.processingFailed(Failure())  # type: ignore[no-untyped-call]

    def finish(self) -> None:
        """Finish, or (answered before the upload's body arrived) once it is drained.

        A response with a known length is complete once written: it is sent at once,
        before the access log, metrics and callbacks that finishing runs.
        """
        if self._continue_due:  # an answer with no body: write() has not seen it
            self._refused_before_body()
        if not self._body_done and not self._disconnected:
            self._finish_pending = True
            if self.body_pipe is not None:
                self.body_pipe.discard()
            self._answered_before_body()
            return
        self._stop_draining()
        if not self.chunked and self.startedWriting:
            flush_now(getattr(self.channel, "transport", None))
        super().finish()  # type: ignore[no-untyped-call]

    def _answered_before_body(self) -> None:
        """The answer is complete, the body still arriving: it is read and dropped.

        The request counts as done now (access log, metrics, in flight, so shutdown
        does not wait for it): its answer is out. The rest of the body keeps the
        connection in step for the next request, but only for ``DRAIN_SECONDS``: a
        client that goes on sending what was refused (a declared 1 GB, an endless
        chunked body) is then cut off; it has had its answer.
        """
        flush_now(getattr(self.channel, "transport", None))
        notifications, self.notifications = self.notifications, []
        for waiter in notifications:
            waiter.callback(None)
        channel: Any = self.channel
        if self._drain_deadline is None and getattr(channel, "callLater", None) is not None:
            self._drain_deadline = channel.callLater(DRAIN_SECONDS, self._drained_too_long)

    def _drained_too_long(self) -> None:
        self._drain_deadline = None
        transport = getattr(getattr(self, "channel", None), "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _stop_draining(self) -> None:
        deadline, self._drain_deadline = self._drain_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        """A client gone mid-upload fails the upstream request (nothing is stored)."""
        # Marked first: failing the upload may finish the request before Twisted notes
        # the loss, and its access line must still say aborted.
        self.client_gone = not self.finished
        self.unanswered = (
            not self.finished and not self.startedWriting and not self.answered_by_channel)
        self._stop_draining()
        if self.body_pipe is not None and not self._body_done:
            self._body_done = True
            self.body_pipe.abort(reason)
        self._drop_spool()  # Twisted's close() would raise on a full disk
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        """Store body bytes until the cap; discard the rest (or stream them upstream)."""
        pipe = self.body_pipe
        if pipe is not None:
            if pipe.length is None and not self.too_large and not self._body_done:
                # Chunked: no declared length was checked against the cap.
                self._body_seen += len(data)
                if self._body_seen > self._body_limit():
                    self._outgrown(pipe)
                    return
            pipe.feed(data)
            return
        if self.too_large or self._early or self.spool_error is not None:
            return
        self._body_seen += len(data)
        if self._body_seen > self._body_limit():
            # A chunked body (a declared length was checked at the headers) outgrew the
            # cap: answered now, not after its end (which may never come).
            self.too_large = True
            assert self.content is not None
            self.content.seek(0)
            self.content.truncate()
            line = self._request_line()
            if not self._dispatched and line is not None:
                self._early, self._body_done = True, False
                self.requestReceived(*line)
            return
        try:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]
        except OSError as exc:  # a body over 100 kB is spooled by Twisted: the disk is full
            self._cannot_spool(exc)

    def _cannot_spool(self, exc: OSError) -> None:
        """The body cannot be stored: drop it, and answer 507 once it has arrived."""
        self.spool_error = exc
        self._drop_spool()

    def _drop_spool(self) -> None:
        """Close the body's temporary file, if Twisted made one, without raising."""
        if not isinstance(self.content, io.BytesIO):
            close_quietly(self.content)
            self.content = io.BytesIO()


def _aborted(request: Any, outcome: Any) -> bool:
    """Whether a request's answer did not reach its client whole (for the access log)."""
    if request.route == "mounted":
        # A WebSocket's upgrade request ends with ConnectionDone once upgraded (or when a
        # refused handshake's socket closes cleanly): no abort (gateway.ws.resource).
        return outcome is not None and not outcome.check(ConnectionDone)
    return (
        request.client_gone or request.cut_short or _truncated(request) or outcome is not None
    )


def logged_status(request: Any) -> int:
    """The status a finished request is logged and counted with.

    The one sent, or :data:`CLIENT_CLOSED_REQUEST` when the client left before the
    answer's head was written (whatever was written after went nowhere; an upgraded
    WebSocket's 101 is not written through the request).
    """
    if request.unanswered and request.route != "mounted":
        return CLIENT_CLOSED_REQUEST
    return int(request.code)


def _truncated(request: Any) -> bool:
    """Whether fewer body bytes left than the response's ``Content-Length`` promised.

    A download cut by the client, the upstream or the end of a shutdown's grace.
    """
    if request.method == b"HEAD" or request.code in (204, 304):
        return False
    declared = request.responseHeaders.getRawHeaders(b"content-length")
    if not declared or not declared[0].isdigit():
        return False
    return int(request.sentLength) < int(declared[0])
