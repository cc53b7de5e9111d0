"""CouchDB 3's attachment ``Range`` handling, in front of pouchdb-server.

pouchdb-server ignores ``Range``. CouchDB 3 honours a single ``bytes=`` range on an
attachment stored as identity and answers 206, and it ignores ``If-Range`` altogether
(``chttpd_db.erl``: only ``If-None-Match`` is checked). Tests of how the gateway copes
with that put this relay between the gateway and the server. It forwards every request
as it is, records the headers that matter, and cuts a requested range out of a 200
attachment answer the way CouchDB would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

__all__ = ["CouchRangeRelay", "SeenRequest"]

_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
               b"accept-encoding"}


@dataclass(frozen=True)
class SeenRequest:
    """What the relay was asked."""

    method: str
    path: str
    range: str | None
    if_range: str | None


@dataclass
class CouchRangeRelay(Resource):
    """A resource relaying to ``upstream`` with CouchDB's attachment ``Range`` answers.

    Attributes:
        upstream: Base URL of the real server.
        seen: Every request relayed, in order.
    """

    upstream: str
    reactor: Any
    seen: list[SeenRequest] = field(default_factory=list)
    #: Attachment paths (``/db/doc/name``) to serve as CouchDB serves one it stores
    #: compressed to a client that does not take gzip: whole, ``Accept-Ranges: none``.
    compressed: set[str] = field(default_factory=set)
    isLeaf = True  # noqa: N815 - twisted.web's name

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def site(self) -> Site:
        """A site serving this relay."""
        return Site(self)

    def render(self, request: Any) -> Any:
        """Relay the request; the answer follows when the server's is in."""
        Deferred.fromCoroutine(self._relay(request)).addErrback(
            lambda failure: (request.setResponseCode(502), request.finish())
        )
        return NOT_DONE_YET

    async def _relay(self, request: Any) -> None:
        path = request.uri.decode("latin-1")
        wanted = request.getHeader("range")
        self.seen.append(SeenRequest(request.method.decode(), path.split("?", 1)[0], wanted,
                                     request.getHeader("if-range")))
        headers = Headers({name: values for name, values in request.requestHeaders.getAllRawHeaders()
                           if name.lower() not in _HOP_BY_HOP | {b"range", b"if-range"}})
        body = request.content.read()
        response = await treq.request(
            request.method.decode(), self.upstream + path, headers=headers,
            data=body or None, reactor=self.reactor, persistent=False,
        )
        content = await treq.content(response)
        status = response.code
        is_attachment = len([s for s in path.split("?", 1)[0].split("/") if s]) >= 3
        whole = path.split("?", 1)[0] in self.compressed
        match = (_SINGLE_RANGE.match(wanted or "")
                 if is_attachment and status == 200 and not whole else None)
        if match is not None and (match.group(1) or match.group(2)):
            size = len(content)
            first, last = match.group(1), match.group(2)
            start = int(first) if first else max(0, size - int(last))
            end = min(int(last), size - 1) if first and last else size - 1
            if start < size:
                request.setHeader("Content-Range", f"bytes {start}-{end}/{size}")
                content, status = content[start:end + 1], 206
        request.setResponseCode(status)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        if is_attachment and status == 200:
            request.setHeader("Accept-Ranges", "none" if whole else "bytes")
        request.setHeader("Content-Length", str(len(content)))
        if request.method != b"HEAD":
            request.write(content)
        request.finish()
