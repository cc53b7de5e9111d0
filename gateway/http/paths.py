"""Which paths may reach CouchDB: raw-path checks and name validation (pure functions).

Route parameters arrive percent-encoded (Twisted and Klein do not decode them); they are
decoded here, once, and validated before any upstream call. The CouchDB client then
encodes every segment in full, so a decoded value can never become a path separator,
a ``..`` or another endpoint upstream. System databases (``_users``, ``_replicator``
…) and server endpoints (``_config``, ``_node``, ``_all_dbs`` …) have no route, and
names that would reach them are refused.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from gateway.errors import AccessDenied, InvalidRequest

__all__ = [
    "attachment_name", "attachment_url", "body_document_id", "check_raw_path",
    "database_name", "design_name", "document_id", "document_url", "has_control_characters",
    "unaddressable_id",
]

_DB_NAME = re.compile(r"^[a-z][a-z0-9_$()+/-]*$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_SPECIAL_DOC_PREFIXES = ("_design/", "_local/")


def _decode(raw: str, what: str) -> str:
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} is not valid UTF-8") from None
    if _FORBIDDEN_CHARS.search(value):
        raise InvalidRequest(f"{what} contains control characters")
    return value


def check_raw_path(raw: bytes) -> None:
    """Refuse request paths that try to traverse or smuggle.

    Refused: control characters (raw or percent-encoded), empty segments (``//`` or a
    trailing ``/``), and
    segments that are ``.`` or ``..`` in any encoding.

    Raises:
        InvalidRequest: The path is malformed.
    """
    path = raw.split(b"?", 1)[0]
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("the request path must be ASCII (percent-encode the rest)") from None
    if not text.startswith("/"):
        raise InvalidRequest("the request path must start with '/'")
    segments = text.split("/")[1:]
    if text != "/" and text.endswith("/") and "" not in segments[:-1]:
        raise InvalidRequest("the path must not end with '/'")
    for segment in segments:
        if segment == "" and text != "/":
            raise InvalidRequest("empty path segments ('//') are not allowed")
        decoded = unquote(segment, errors="replace")
        if decoded in (".", "..") or _FORBIDDEN_CHARS.search(decoded):
            raise InvalidRequest("relative or control segments are not allowed in the path")


def database_name(raw: str) -> str:
    """Decode and validate a database name.

    Raises:
        AccessDenied: A system database or any ``_``-prefixed name (never exposed).
        InvalidRequest: Not a valid CouchDB database name.
    """
    name = _decode(raw, "the database name")
    if name.startswith("_") or name.lstrip("/").startswith("_"):
        raise AccessDenied("system databases and server endpoints are not exposed")
    if len(name) > 238 or not _DB_NAME.match(name):
        raise InvalidRequest(
            "invalid database name: lower-case letters, digits and _$()+-/ only, "
            "starting with a letter"
        )
    return name


#: Ids that are a whole path segment URL normalisation removes (RFC 3986, 6.2.2.3).
_DOT_SEGMENTS = (".", "..")
_DOT_SEGMENT_REASON = ("is a '.' or '..' path segment, which URL normalisation removes: "
                       "no URL could name the document")


def document_id(raw: str) -> str:
    """Decode and validate a document id.

    Ordinary ids may not start with ``_`` (CouchDB reserves those for endpoints such as
    ``_all_docs``); ``_design/name`` and ``_local/name`` are allowed, ``name`` holding
    ``/`` too (written ``%2F``, as CouchDB takes ``_design/a%2Fb``) but no ``.``, ``..``
    or empty part between them.

    Raises:
        InvalidRequest: Empty, ``.`` or ``..``, or reserved.
    """
    doc_id = _decode(raw, "the document id")
    if not doc_id:
        raise InvalidRequest("the document id is empty")
    problem = unaddressable_id(doc_id)  # control characters: refused by _decode already
    if problem is not None:
        raise InvalidRequest(f"the document id {doc_id!r} {problem}")
    if doc_id.startswith("_"):
        for prefix in _SPECIAL_DOC_PREFIXES:
            if doc_id.startswith(prefix):
                rest = doc_id[len(prefix):]
                # No '.', '..' or empty part: a proxy between the gateway and CouchDB
                # that decodes %2F would otherwise climb out of the database.
                if all(part not in ("", ".", "..") for part in rest.split("/")):
                    return doc_id
        raise InvalidRequest(
            "document ids starting with '_' are reserved (except '_design/x' and '_local/x')"
        )
    return doc_id


def unaddressable_id(doc_id: str) -> str | None:
    """Why no URL of the API could name a document of this id (``None``: one can).

    For ids CouchDB itself takes in a ``_bulk_docs`` body; it refuses empty and reserved
    ones on its own, one document at a time.
    """
    if has_control_characters(doc_id):
        return "contains control characters: no URL of the API could name the document"
    if doc_id in _DOT_SEGMENTS:
        return _DOT_SEGMENT_REASON
    return None


def has_control_characters(value: str) -> bool:
    """Whether ``value`` holds a character no path of the API takes (U+0000 to U+001F, U+007F)."""
    return _FORBIDDEN_CHARS.search(value) is not None


def body_document_id(doc_id: str) -> str:
    """Validate an ``_id`` given in a body as :func:`document_id` does one in a path.

    A document stored under an id no path of the API takes could never be read,
    updated or deleted through the gateway again.

    Raises:
        InvalidRequest: Empty, ``.`` or ``..``, reserved, or with control characters.
    """
    return document_id(doc_id.replace("%", "%25"))


def attachment_owner(raw: str) -> str:
    """Decode and validate the id of a document whose attachments are addressed.

    CouchDB keeps no attachments on ``_local`` documents ("_local documents do not
    accept attachments"); their URL would name another local document.

    Raises:
        InvalidRequest: Not a valid document id, or a ``_local`` one.
    """
    doc_id = document_id(raw)
    if doc_id.startswith("_local/"):
        raise InvalidRequest("_local documents do not accept attachments")
    return doc_id


def design_name(raw: str, what: str = "the design document name") -> str:
    """Decode and validate a design-document, view or index name (one segment).

    Raises:
        InvalidRequest: Empty, containing ``/``, or a relative segment.
    """
    name = _decode(raw, what)
    if not name or "/" in name or name in (".", ".."):
        raise InvalidRequest(f"{what} must be one non-empty path segment")
    return name


def attachment_name(raw: str) -> str:
    """Decode and validate an attachment name (``/`` allowed inside, encoded as ``%2F``).

    Raises:
        InvalidRequest: Empty, ``_``-prefixed, or with relative or empty segments.
    """
    name = _decode(raw, "the attachment name")
    if not name or name.startswith("_"):
        raise InvalidRequest("attachment names may not be empty or start with '_'")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidRequest("attachment names may not contain empty or relative segments")
    return name


def document_url(db: str, doc_id: str) -> str:
    """The gateway's path of a document (each name one percent-encoded segment).

    Args:
        db: The database name, decoded.
        doc_id: The document id, decoded.
    """
    return f"/api/v1/db/{quote(db, safe='')}/docs/{quote(doc_id, safe='')}"


def attachment_url(db: str, doc_id: str, name: str) -> str:
    """The gateway's path of an attachment (``/`` in its name as ``%2F``).

    Args:
        db: The database name, decoded.
        doc_id: The document id, decoded.
        name: The attachment name, decoded.
    """
    return f"{document_url(db, doc_id)}/attachments/{quote(name, safe='')}"
