"""Relaying a JSON request to CouchDB and its answer back to the client, as CouchDB wrote it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.config import Settings
from gateway.couch import CouchServer
from gateway.couch.transport import CouchResponse, Reactor
from gateway.http.compression import codes, gzip_answer, gzip_stream, takes_gzip
from gateway.http.conditional import (
    content_etag,
    etag_header,
    etag_matches,
    is_revision_tag,
    matched_weak,
    must_revalidate,
    not_modified,
    set_revision_etag,
)
from gateway.http.request_args import raw_header
from gateway.http.responses import encode_json, json_response, write_location
from gateway.http.streaming import client_backlog
from gateway.http.upstream_timing import TimedCall

__all__ = ["Forwarder"]


def _revalidatable(
    request: Any, answer: CouchResponse, condition: str | None, min_bytes: int,
) -> bytes:
    """A 200 or 304 from CouchDB as an answer the browser may keep and revalidate.

    Its ``ETag`` is CouchDB's, or one made from the bytes when CouchDB gives none. A
    match with ``If-None-Match`` (``condition``), or CouchDB's own 304, is answered 304,
    with the ``ETag`` the 200 would have had (RFC 9110, 15.4.5): weak when that 200 would
    be gzip-coded (``min_bytes``), or else a cache would not freshen its coded copy with it.
    """
    etag = answer.header("ETag")
    if etag is None and answer.raw is not None:
        etag = content_etag(answer.raw)
    if answer.status == 304 or etag_matches(condition, etag):
        if etag is not None and not etag.startswith("W/"):
            if answer.status == 304:  # CouchDB's: the size is unknown, the client's copy tells
                coded = matched_weak(condition, etag) and takes_gzip(request, min_bytes)
            else:
                body = answer.raw if answer.raw is not None else encode_json(answer.body)
                coded = codes(request, len(body), min_bytes)
            if coded:
                etag = "W/" + etag
        return not_modified(request, etag)
    must_revalidate(request)
    return json_response(request, answer.status, answer.body, {"ETag": etag} if etag else {},
                         encoded=answer.raw)


class Forwarder:
    """Sends JSON requests upstream and answers with CouchDB's status and body.

    Args:
        settings: Configuration (answer buffering, gzip threshold, send stall timeout).
        reactor: Clock for a streamed answer's deadlines.
        timed: Awaits an upstream call and records its latency.
    """

    def __init__(self, settings: Settings, reactor: Reactor, timed: TimedCall) -> None:
        self.settings = settings
        self.reactor = reactor
        self._timed = timed

    async def forward(
        self,
        request: Any,
        couch: CouchServer,
        method: str,
        segments: list[str],
        *,
        revalidate: bool = False,
        amend: Callable[[Any], Any] | None = None,
        rev_etag: str | None = None,
        stream_large: bool = False,
        location: Callable[[str], str] | None = None,
        **kwargs: Any,
    ) -> bytes:
        """Send a JSON request upstream and answer with CouchDB's status and body.

        The body is relayed as CouchDB wrote it (it was decoded, so it is JSON): not
        re-encoding saves a view's worth of ``json.dumps`` per request and keeps its
        numbers exactly as CouchDB wrote them.

        With ``revalidate`` (GETs of documents and views) the browser may keep the answer
        and revalidate it. Its ``ETag`` is CouchDB's, or one made from the bytes when
        CouchDB gives none (views, ``_all_docs``). The client's ``If-None-Match`` goes
        to CouchDB too; CouchDB's 304, or a match with the current ``ETag``, is answered
        304 with no body. Large answers are gzip-coded for clients that accept it
        (:func:`~gateway.http.compression.gzip_answer`).

        ``amend`` may give a successful answer's body in another form; only a body it
        changes (returns another object) is encoded again. ``rev_etag`` names the body
        member holding a document's revision, which becomes the ``ETag`` as on CouchDB.
        ``location`` gives the gateway's path of a written document from its id: a write's
        answer names it in ``Location``, as CouchDB's names its own URL.

        With ``stream_large`` (query answers, which grow with the database) a successful
        answer over ``buffer_answer_bytes`` is not held but streamed
        (:meth:`relay_spilled`); a HEAD of one gets the streamed GET's headers and the
        rest of the body is never read.

        Args:
            request: The client's request.
            couch: The upstream server, as the user.
            method: The upstream method.
            segments: The upstream path's segments.
            revalidate: Whether the browser may keep the answer and revalidate it.
            amend: Gives a successful answer's body in another form.
            rev_etag: The body member holding the document's revision, for the ``ETag``.
            stream_large: Whether an answer too large to hold is streamed.
            location: The gateway's path of a written document, given its id.
            **kwargs: Passed to ``couch.transport.send`` (``params``, ``json``…).

        Returns:
            The body for Klein to write; for a streamed answer, only what is left (the
            end of its gzip stream, or nothing).
        """
        condition = request.getHeader("if-none-match") if revalidate else None
        if condition is not None:
            kwargs["headers"] = {"If-None-Match": raw_header(request, b"if-none-match")}
        if stream_large and amend is None:
            kwargs["spill_over"] = self.settings.buffer_answer_bytes
        answer = await self._timed(request, couch.transport.send(method, segments, **kwargs))
        if answer.spilled is not None:
            if rev_etag is not None and not is_revision_tag(answer.header("ETag")):
                # The revision is in the body, which has not been read: only an upstream
                # tag that is a revision (CouchDB's) may stand for it (see If-Match).
                answer.headers.removeHeader(b"etag")
            return await self.relay_spilled(request, couch, answer, revalidate)
        if rev_etag is not None:
            set_revision_etag(answer, rev_etag)
        if amend is not None and 200 <= answer.status < 300:
            amended = amend(answer.body)
            if amended is not answer.body:
                answer = replace(answer, body=amended, raw=None)
        if revalidate and answer.status in (200, 304):
            data = _revalidatable(request, answer, condition, self.settings.compress_min_bytes)
        else:
            headers = etag_header(answer)
            if location is not None:
                headers.update(write_location(answer.status, answer.body, location))
            data = json_response(request, answer.status, answer.body, headers,
                                 encoded=answer.raw)
        return gzip_answer(request, data, self.settings.compress_min_bytes)

    async def relay_spilled(
        self, request: Any, couch: CouchServer, answer: CouchResponse, revalidate: bool
    ) -> bytes:
        """Stream a successful answer too large to hold, as CouchDB sends it.

        It goes chunked, gzip-coded on the fly for clients that take it, with CouchDB's
        own ``ETag`` if any (one made from the bytes would come after them). A client
        slower than CouchDB pauses the upstream connection. If the answer breaks off,
        the client's connection is cut (:meth:`gateway.http.app.GatewayApp.on_error`), so
        a truncated answer never looks complete. A HEAD gets the same headers (no
        ``Content-Length``: the GET's is unknown too) and the upstream body is dropped.

        Args:
            request: The client's request.
            couch: The upstream server the answer came from (its timeout applies).
            answer: The answer, spilled (its body not read yet).
            revalidate: Whether the browser may keep the answer and revalidate it.

        Returns:
            The end of the gzip stream, if the answer is gzip-coded, else nothing.
        """
        spilled = answer.spilled
        assert spilled is not None
        try:
            request.setResponseCode(answer.status)
            request.setHeader("Content-Type", "application/json")
            etag = answer.header("ETag")
            if etag:
                request.setHeader("ETag", etag)
            if revalidate:
                must_revalidate(request)
            compressor = gzip_stream(request, self.settings.compress_min_bytes)
        except BaseException:
            spilled.abort()
            raise
        if request.method == b"HEAD":
            spilled.abort()
            return b""
        def write(chunk: bytes) -> None:
            # Looked up each time: Twisted swaps ``request.write`` after the headers of
            # answers that must have no body.
            request.write(chunk if compressor is None else compressor.compress(chunk))

        await spilled.relay(write, request, clock=self.reactor, timeout=couch.transport.timeout,
                            stall_timeout=self.settings.send_stall_timeout,
                            backlog=client_backlog(request))
        return compressor.flush() if compressor is not None else b""
