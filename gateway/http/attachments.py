"""Attachment bodies between browsers and CouchDB, streamed both ways.

Downloads (:meth:`Attachments.download`) keep CouchDB's ``ETag``, answer
``If-None-Match`` and ``Range``/``If-Range`` (cutting the body here when the upstream
does not), and go to the client through :func:`gateway.http.streaming.relay`, by
``splice(2)`` where it can. Uploads (:meth:`Attachments.upload`) go upstream while
they arrive when the request declared its length, or are spooled first (chunked
bodies, and every body to pouchdb-server); the routes in :mod:`gateway.http.app` call
these once the caller is authenticated.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.protocol import Protocol as BodyProtocol

from gateway.config import Settings
from gateway.couch import CouchServer
from gateway.couch.transport import Reactor, abandon, read_body, unsure_of_write
from gateway.couch.urls import attachment_path, doc_path
from gateway.errors import (
    CouchError,
    CouchTimeout,
    InvalidRequest,
    PayloadTooLarge,
    RangeNotSatisfiable,
)
from gateway.http.conditional import (
    etag_header,
    etag_matches,
    must_revalidate,
    opaque_tag,
    range_applies,
)
from gateway.http.paths import attachment_url
from gateway.http.request_args import raw_header
from gateway.http.responses import json_response, write_location
from gateway.http.splice_relay import Splicer
from gateway.http.streaming import (
    BodyPipe,
    SpooledBody,
    parse_range,
    relay,
    spool,
    upload_producer,
)
from gateway.http.upstream_timing import TimedCall

__all__ = ["Attachments", "Discard", "TimedCall"]

T = TypeVar("T")
#: Where an attachment lives: database, document id, attachment name.
Where = tuple[str, str, str]
_COPIED_HEADERS = (
    "Content-Type", "ETag", "Content-Range",
    "Content-Encoding", "Content-MD5", "Last-Modified",
)
_UPLOAD_BYTES_PER_SECOND = 1024 * 1024


class Discard(BodyProtocol):
    """A body protocol that drops what it receives (304s and HEADs)."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Drop the bytes."""


class Attachments:
    """Moves attachment bodies between clients and CouchDB.

    Args:
        settings: Configuration (timeouts, size cap, the attachments' CSP).
        service: The upstream server with the service's credentials: asked once what
            it is, to know whether it may be sent an upload while it arrives.
        reactor: Clock for deadlines.
        splicer: Zero-copy relays (see :mod:`gateway.http.splice_relay`).
        timed: Awaits an upstream call and records its latency.
    """

    def __init__(
        self, settings: Settings, *, service: CouchServer, reactor: Reactor,
        splicer: Splicer, timed: TimedCall,
    ) -> None:
        self.settings = settings
        self.service = service
        self.reactor = reactor
        self.splicer = splicer
        self._timed = timed
        self._upload_streaming: bool | None = None

    # -- downloads ---------------------------------------------------------------

    async def download(
        self, request: Any, couch: CouchServer, where: Where, query: Mapping[str, Any]
    ) -> bytes:
        """Stream an attachment down (``ETag``/``If-None-Match``, ``Range``).

        Args:
            request: The client's GET or HEAD.
            couch: The upstream server, as the caller.
            where: The attachment.
            query: The request's validated query (``rev``).

        Returns:
            ``b""``: the body has been written to ``request``.

        Raises:
            CouchError: CouchDB refused (its status and reason).
            RangeNotSatisfiable: The range lies outside the attachment.
        """
        method = "HEAD" if request.method == b"HEAD" else "GET"
        # Only GET has ranges (RFC 9110 14.2). CouchDB cuts a Range without looking at
        # If-Range: with If-Range the whole body is asked for, and the range decided
        # below against its ETag.
        ranged = method == "GET" and request.getHeader("range") is not None
        forwarded = ("Range", "If-None-Match") if ranged and not request.getHeader(
            "if-range") else ("If-None-Match",)
        headers: dict[str, str | bytes] = {}
        for header in forwarded:
            value = raw_header(request, header.lower().encode("ascii"))
            if value is not None:
                headers[header] = value
        response: Any = await self._timed(request, couch.transport.open_stream(
            method, attachment_path(*where), params=query, headers=headers,
            raise_for_status=False,
        ))
        if response.code >= 400:
            raw = await read_body(response)
            try:
                detail = json.loads(raw) if raw else None
            except ValueError:
                detail = None
            raise CouchError.from_response(response.code, detail)
        etag = response.headers.getRawHeaders("etag", [None])[0]
        status = response.code
        if status == 200 and etag_matches(request.getHeader("if-none-match"), etag):
            status = 304  # the server ignored If-None-Match: answer it here
        length = response.headers.getRawHeaders("content-length", [None])[0]
        if length is None and method == "GET" and isinstance(response.length, int):
            length = str(response.length)  # Twisted's client moves Content-Length there
        # CouchDB serves no ranges of an attachment it stores compressed ("none").
        cuttable = response.headers.getRawHeaders("accept-ranges", ["bytes"])[0] != "none"
        wanted = request.getHeader("range") if status == 200 and ranged and cuttable else None
        if wanted is not None and not range_applies(request.getHeader("if-range"), etag):
            wanted = None  # RFC 9110 13.1.5: another version: the whole body, 200
        skip, limit = 0, None
        if status == 200 and (length is None or wanted is not None):
            # Upstream sent no length or ignored Range (pouchdb-server): the stub knows.
            try:
                stub = await self._stub_length(request, couch, where, query, etag)
            except BaseException:  # an error, a timeout, or the client leaving (cancelled)
                abandon(response)
                raise
            length = str(stub) if stub is not None else None
            if wanted is not None and stub is not None:
                try:
                    span = parse_range(wanted, stub)
                except ValueError:
                    abandon(response)  # not read to its end: it may be gigabytes
                    request.setHeader("Content-Range", f"bytes */{stub}")
                    raise RangeNotSatisfiable("the range is outside the attachment") from None
                if span is not None:
                    skip, limit = span[0], span[1] - span[0] + 1
                    status = 206
                    request.setHeader("Content-Range", f"bytes {span[0]}-{span[1]}/{stub}")
                    length = str(limit)
        request.setResponseCode(status)
        must_revalidate(request)
        for header in _COPIED_HEADERS:
            if header == "Content-MD5" and status != 200:
                continue  # the whole attachment's digest: CouchDB sends it on a 200 only
            # As bytes: a stored Content-Type may hold any byte (not UTF-8 text).
            values = response.headers.getRawHeaders(header.encode("ascii"))
            if values and not request.responseHeaders.hasHeader(header.encode("ascii")):
                request.setHeader(header, values[0])
        if status != 304:  # CouchDB's 304 says nothing of ranges: neither does this one
            request.setHeader("Accept-Ranges", "bytes" if cuttable else "none")
        if self.settings.attachment_csp:
            # As CouchDB 3.2+ does ([csp] attachments_enable): served on the API's origin,
            # an HTML or SVG attachment must not run script with the user's session.
            request.setHeader("Content-Security-Policy", self.settings.attachment_csp)
        if status == 304 or method == "HEAD":
            if length is not None and status != 304:
                request.setHeader("Content-Length", length)
            response.deliverBody(Discard())
            return b""
        if length is not None:
            request.setHeader("Content-Length", length)
        await relay(response, request, skip, limit, splicer=self.splicer, clock=self.reactor,
                    stall_timeout=self.settings.send_stall_timeout)
        return b""

    async def _stub_length(
        self, request: Any, couch: CouchServer, where: Where,
        query: Mapping[str, Any], etag: str | None,
    ) -> int | None:
        """The attachment's length from its document's stub (``None`` if unknown).

        The stub is read in a second request: it must describe the body already
        received (``etag``, its digest), or a concurrent write would give one version's
        bytes another's length (and a resumed download, mixed versions).
        """
        db, doc_id, att = where
        params = {"rev": query["rev"]} if "rev" in query else None
        doc = await self._timed(
            request, couch.transport.request("GET", doc_path(db, doc_id), params=params)
        )
        stubs = doc.get("_attachments") if isinstance(doc, dict) else None
        stub = stubs.get(att) if isinstance(stubs, dict) else None
        if not isinstance(stub, dict) or stub.get("encoding"):
            return None
        digest = stub.get("digest")
        if etag is not None and isinstance(digest, str) and digest.startswith("md5-") \
                and opaque_tag(etag) != f'"{digest[4:]}"':
            return None  # another version than the body in hand
        length = stub.get("length")
        return length if isinstance(length, int) else None

    # -- uploads -----------------------------------------------------------------

    async def upload(
        self, request: Any, couch: CouchServer, where: Where, query: Mapping[str, Any]
    ) -> bytes:
        """PUT the request's body upstream as the attachment; its ``Content-Type`` is kept.

        A ``Content-MD5`` goes upstream with it, and CouchDB refuses a body that does not
        match (400 ``content_md5_mismatch``). A chunked upload's digest in a trailer is
        not checked: Twisted drops trailers, and the body goes upstream with a length.

        Args:
            request: The client's PUT, its body not yet read (see
                ``GatewayRequest.gotLength``) unless the site received it whole.
            couch: The upstream server, as the caller.
            where: The attachment.
            query: The request's validated query (``rev``).

        Returns:
            CouchDB's answer, as JSON.

        Raises:
            PayloadTooLarge: The declared length is over ``WALLABY_MAX_ATTACHMENT_BYTES``.
            InvalidRequest: ``Content-MD5`` is not base64.
            CouchTimeout: CouchDB did not answer in time once the body was sent.
        """
        # Streamed (a Content-Length body) or spooled (chunked, or to pouchdb-server),
        # in either case only now that the caller is known.
        pipe = getattr(request, "body_pipe", None)
        producer: Any = pipe or upload_producer(request)
        declared = producer.length
        if isinstance(declared, int) and declared > self.settings.max_attachment_bytes:
            raise PayloadTooLarge("the attachment is too large")
        _content_md5(request)  # refused before the body is read, not by CouchDB's 500
        if pipe is not None and (pipe.length is None or not await self._streams_uploads(request)):
            producer = await spool(pipe)  # a chunked body goes whole, with its length
        try:
            return await self._send(request, couch, where, query, producer,
                                    streamed=producer is pipe)
        finally:
            if isinstance(producer, SpooledBody):
                producer.release()  # an upload that never began must not keep its spool

    async def _send(
        self, request: Any, couch: CouchServer, where: Where,
        query: Mapping[str, Any], producer: Any, *, streamed: bool,
    ) -> bytes:
        """PUT an attachment's body upstream; the deadline grows with its size."""
        size = producer.length if isinstance(producer.length, int) else 0
        headers: dict[str, str | bytes] = {
            "Content-Type": raw_header(request, b"content-type") or b"application/octet-stream",
        }
        digest = _content_md5(request)
        if digest is not None:
            headers["Content-MD5"] = digest
        timeout = self.settings.request_timeout + size / _UPLOAD_BYTES_PER_SECOND
        send = couch.transport.send(
            "PUT", attachment_path(*where), params=query, data=producer,
            headers=headers, timeout=None if streamed else timeout,
        )
        if streamed:
            producer.splicer = self.splicer  # not to pouchdb-server: spooled before
            send = self._timeout_after_body(producer, send, attachment_path(*where))
        answer = await self._timed(request, send)
        location = write_location(answer.status, answer.body, lambda _: attachment_url(*where))
        return json_response(request, answer.status, answer.body,
                             {**etag_header(answer), **location})

    async def _timeout_after_body(
        self, pipe: BodyPipe, call: Coroutine[Any, Any, T], segments: list[str]
    ) -> T:
        """``call``, timed out ``request_timeout`` seconds after the body has arrived.

        A streamed upload lasts as long as the client takes to send its body (a slow
        client is not an upstream timeout); the upstream's answer after it is bounded,
        and its absence leaves the write's outcome unknown (no ``Retry-After``).
        """
        deferred = ensureDeferred(call)
        timers: list[Any] = []

        def arm(_: object) -> None:
            if not deferred.called:
                timers.append(self.reactor.callLater(self.settings.request_timeout,
                                                     deferred.cancel))

        pipe.when_received().addCallback(arm)
        try:
            return await deferred
        except CancelledError:
            if timers and not timers[0].active():
                late = CouchTimeout(
                    f"CouchDB did not answer within {self.settings.request_timeout:g} s")
                raise unsure_of_write(late, "PUT", segments) from None  # it had the body
            raise
        finally:
            for timer in timers:
                if timer.active():
                    timer.cancel()

    async def _streams_uploads(self, request: Any) -> bool:
        """Whether attachment bodies may go upstream while they arrive (asked once).

        Not to pouchdb-server (the embedded default): when an upload is cut short (the
        client went away) it stores an empty attachment as a new revision, where
        CouchDB stores nothing. Its uploads are received completely first.
        """
        if self._upload_streaming is None:
            welcome = await self._timed(
                request, self.service.transport.send("GET", [], raise_for_status=False)
            )
            body = welcome.body if isinstance(welcome.body, dict) else {}
            vendor = str((body.get("vendor") or {}).get("name", "")).lower()
            self._upload_streaming = "express-pouchdb" not in body and "pouchdb" not in vendor
        return self._upload_streaming


def _content_md5(request: Any) -> str | None:
    """The upload's ``Content-MD5`` (``None`` if it has none), checked to be base64.

    CouchDB decodes it and compares the body's digest with it; one it cannot decode
    would be its 500, not the client's 400.

    Raises:
        InvalidRequest: The value is not base64.
    """
    values = request.requestHeaders.getRawHeaders(b"content-md5")
    if not values:
        return None
    try:
        base64.b64decode(values[-1].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("'Content-MD5' must be the base64 of the body's MD5 digest") \
            from None
    return str(values[-1].strip().decode("ascii"))
