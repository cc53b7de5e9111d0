"""Conditional GETs: ``If-None-Match`` against an ``ETag`` (RFC 9110, section 13.1.2).

A browser keeps a document, a view answer or an attachment it fetched with an ``ETag``
and asks again with ``If-None-Match``. When nothing changed it gets ``304 Not
Modified`` with no body. CouchDB authorizes every such request first, so a cached
answer is only used by someone who may still read it.

CouchDB gives documents an ``ETag`` (their revision) but, since 2.0, none to views and
``_all_docs``: for those the gateway makes one from the bytes it relays
(:func:`content_etag`). The view still runs upstream, but an unchanged answer does not
travel to the browser again.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway.couch.transport import CouchResponse

__all__ = [
    "DOC_META_OPTIONS", "REVALIDATE", "content_etag", "etag_header", "etag_matches",
    "if_match_revision",
    "is_revision_tag", "matched_weak", "must_revalidate", "not_modified", "opaque_tag",
    "range_applies",
    "set_revision_etag",
]

#: ``Cache-Control`` of answers a browser may keep but must revalidate before each use:
#: ``private`` because they depend on who asks.
REVALIDATE = "private, no-cache"

# An entity tag is an optionally weak quoted string; commas may occur inside the quotes,
# so a list is tokenized, not split on commas.
_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')


def content_etag(body: bytes) -> str:
    """A strong ``ETag`` for exactly these bytes (a 128-bit BLAKE2b digest, quoted)."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def etag_header(answer: CouchResponse) -> dict[str, str]:
    """CouchDB's ``ETag`` of ``answer`` as headers to send on (none if it gave none)."""
    etag = answer.header("ETag")
    return {"ETag": etag} if etag else {}


def opaque_tag(tag: str) -> str:
    """An entity tag without its weakness mark: ``W/"x"`` and ``"x"`` name the same."""
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: str | None, etag: str | None) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag``, so a GET is answered 304.

    Uses the weak comparison that RFC 9110 prescribes for ``If-None-Match``: ``W/"x"``
    matches ``"x"``. ``*`` matches any current representation.

    Args:
        if_none_match: The request's header value, or ``None`` when it has none.
        etag: The current representation's ``ETag``, or ``None`` when it has none.
    """
    if if_none_match is None or etag is None:
        return False
    if if_none_match.strip() == "*":
        return True
    current = opaque_tag(etag.strip())
    return any(opaque_tag(tag) == current for tag in _ENTITY_TAG.findall(if_none_match))


def matched_weak(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` in its weak form (``W/"x"`` for ``"x"``).

    Then the client's copy came with a weak tag.
    """
    if if_none_match is None:
        return False
    current = opaque_tag(etag.strip())
    return any(tag.startswith("W/") and opaque_tag(tag) == current
               for tag in _ENTITY_TAG.findall(if_none_match))


def range_applies(if_range: str | None, etag: str | None) -> bool:
    """Whether a ``Range`` applies under ``If-Range`` (absent, or the current strong tag).

    RFC 9110 13.1.5: otherwise the whole body is sent. A date never matches here (the
    gateway's ranged answers, attachments, carry no ``Last-Modified``).
    """
    if if_range is None:
        return True
    return etag is not None and not etag.startswith("W/") and if_range.strip() == etag


def must_revalidate(request: Any) -> None:
    """Let the browser keep this answer, revalidating it before each use.

    Replaces the site's default ``Cache-Control: no-store``.
    """
    request.responseHeaders.setRawHeaders(b"cache-control", [REVALIDATE.encode("ascii")])


def not_modified(request: Any, etag: str | None) -> bytes:
    """Answer ``304 Not Modified``: the validator and caching policy, no body.

    Args:
        request: The request to answer.
        etag: The current ``ETag``, repeated as RFC 9110 asks.
    """
    request.setResponseCode(304)
    for name in (b"content-type", b"content-length"):
        request.responseHeaders.removeHeader(name)
    must_revalidate(request)
    if etag:
        request.setHeader("ETag", etag)
    return b""


# -- documents: their ETag is their revision -----------------------------------------

#: What an entity tag may hold between its quotes (RFC 9110 ``etagc``, ASCII only).
_ETAG_CHARACTERS = re.compile(r"[\x21\x23-\x7e]+")
#: A document's ETag as CouchDB sends it: its revision, ``"<generation>-<hash>"``.
_REVISION_TAG = re.compile(r'"[0-9]+-[\x21\x23-\x7e]+"')

#: Options that give a document GET ``meta`` members; CouchDB then sends no ETag, since
#: they can change while the revision stays.
DOC_META_OPTIONS = ("conflicts", "deleted_conflicts", "revs_info", "local_seq", "meta")


def is_revision_tag(etag: str | None) -> bool:
    """Whether ``etag`` is a document revision, as CouchDB tags documents."""
    return etag is not None and _REVISION_TAG.fullmatch(etag) is not None


def if_match_revision(request: Any, query: dict[str, Any]) -> None:
    """Turn ``If-Match`` into ``rev`` (refusing two different revisions).

    A weak tag (``W/"<rev>"``: the ETag of a gzip-coded answer) names the same revision.

    Raises:
        InvalidRequest: ``If-Match: *``, or a revision other than the query's ``rev``.
    """
    header = request.getHeader("if-match")
    if header is None:
        return
    if header.strip() == "*":
        raise InvalidRequest("'If-Match' takes the ETag of a revision; '*' names none")
    rev = opaque_tag(header.strip()).strip('"')
    if "rev" in query and query["rev"] != rev:
        raise InvalidRequest("'If-Match' and 'rev' name different revisions")
    query["rev"] = rev


def set_revision_etag(answer: CouchResponse, field: str) -> None:
    """Give a document answer CouchDB's ETag, ``"<rev>"`` (``field`` of the body).

    CouchDB sends it; pouchdb-server sends a hash of the body instead, which ``If-Match``
    could not name. The answer's own headers are changed; answers that are not a
    successful JSON object with a revision are left as they are.
    """
    rev = answer.body.get(field) if isinstance(answer.body, dict) else None
    if not isinstance(rev, str) or not 200 <= answer.status < 300:
        return
    if not _ETAG_CHARACTERS.fullmatch(rev):
        # A revision stored with new_edits=false can be any string: one that cannot be
        # an entity tag (a quote, a control or non-ASCII character) gives no tag at all.
        answer.headers.removeHeader(b"etag")
    else:
        answer.headers.setRawHeaders(b"etag", [f'"{rev}"'.encode("ascii")])
