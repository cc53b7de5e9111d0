"""gzip for JSON answers, when the client accepts it (``Accept-Encoding``, RFC 9110 12.5.3).

CouchDB sends JSON uncompressed; views and ``_all_docs`` with documents shrink about
tenfold. Only answers relayed from CouchDB are compressed (documents and query
results), never the gateway's own session answers, which hold a token: compressing a
secret next to text an attacker chooses is what BREACH-style attacks measure.
"""

from __future__ import annotations

import zlib
from typing import Any

__all__ = ["LEVEL", "accepts_gzip", "codes", "gzip_answer", "gzip_stream", "takes_gzip"]

#: zlib level 1, as nginx's default: 0.4 ms per 100 KB of JSON for ~90 % of the saving of
#: level 6, which costs half as much again.
LEVEL = 1


def _quality(parameters: list[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows a gzip-coded answer.

    ``gzip`` (or its alias ``x-gzip``) with a non-zero quality does; without either, a
    non-zero ``*`` does. No header means no preference: such answers stay uncoded.
    """
    if not accept_encoding:
        return False
    wildcard = None
    for item in accept_encoding.split(","):
        coding, *parameters = item.split(";")
        name = coding.strip().lower()
        if name in ("gzip", "x-gzip"):
            return _quality(parameters) > 0
        if name == "*":
            wildcard = _quality(parameters) > 0
    return bool(wildcard)


def _add_vary(request: Any, field: str) -> None:
    present = request.responseHeaders.getRawHeaders(b"vary", [])
    names = {n.strip().lower() for v in present for n in v.decode("latin-1").split(",")}
    if field.lower() not in names:
        joined = ", ".join([*(v.decode("latin-1") for v in present), field])
        request.responseHeaders.setRawHeaders(b"vary", [joined.encode("latin-1")])


def gzip_answer(request: Any, data: bytes, min_bytes: int) -> bytes:
    """Return the answer's body, gzip-coded when the client takes it and it is large enough.

    Sets ``Content-Encoding``, ``Content-Length`` and ``Vary: Accept-Encoding`` (the
    answer depends on that header whether or not this one is coded, so an empty body,
    a 304, gets the ``Vary`` alone), and weakens an ``ETag`` of a coded answer: the
    bytes differ, the content does not.

    Args:
        request: The request being answered (its headers already set).
        data: The uncoded body.
        min_bytes: Smallest body worth coding; 0 turns compression off.
    """
    if min_bytes <= 0:
        return data
    _add_vary(request, "Accept-Encoding")
    if not codes(request, len(data), min_bytes):
        return data
    compressor = _coded(request)
    coded: bytes = compressor.compress(data) + compressor.flush()
    request.responseHeaders.setRawHeaders(b"content-length", [str(len(coded)).encode("ascii")])
    return coded


def takes_gzip(request: Any, min_bytes: int) -> bool:
    """Whether ``request`` gets gzip-coded answers of ``min_bytes`` or more (0: off)."""
    return min_bytes > 0 and accepts_gzip(request.getHeader("accept-encoding"))


def codes(request: Any, size: int, min_bytes: int) -> bool:
    """Whether :func:`gzip_answer` gzip-codes a body of ``size`` bytes for ``request``."""
    return size >= min_bytes and takes_gzip(request, min_bytes)


def gzip_stream(request: Any, min_bytes: int) -> Any:
    """Start gzip-coding a streamed answer (of unknown length) when the client takes it.

    Sets the headers as :func:`gzip_answer` does, less ``Content-Length``. A streamed
    answer is one too large to hold, so it is coded whatever ``min_bytes`` (unless 0).

    Returns:
        A ``zlib`` compressor (``compress`` each chunk, ``flush`` at the end), or
        ``None``: send the answer uncoded.
    """
    if min_bytes <= 0:
        return None
    _add_vary(request, "Accept-Encoding")
    if not accepts_gzip(request.getHeader("accept-encoding")):
        return None
    return _coded(request)


def _coded(request: Any) -> Any:
    """Mark the answer gzip-coded (its ``ETag`` weakened); the compressor."""
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-encoding", [b"gzip"])
    etag = headers.getRawHeaders(b"etag", [None])[0]
    if etag is not None and not etag.startswith(b"W/"):
        headers.setRawHeaders(b"etag", [b"W/" + etag])
    return zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
