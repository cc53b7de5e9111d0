"""Building CouchDB request paths and query strings (pure functions, no I/O).

CouchDB ids may contain any character. Each path segment is percent-encoded in full,
so an id like ``a/b?c#d%e`` becomes one segment ``a%2Fb%3Fc%23d%25e``. Design and
local documents keep their literal prefix (``_design/name``), which is the form CouchDB
documents and answers without a redirect. Attachment names keep ``/`` as a separator,
because CouchDB joins the remaining segments of an attachment path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import idna

from gateway import deep_json

__all__ = [
    "JSON_NULL",
    "JSON_QUERY_PARAMS",
    "Verbatim",
    "attachment_path",
    "changes_query",
    "check_upstream_host",
    "database_path",
    "doc_path",
    "encode_query",
    "join_url",
    "path_bytes",
    "split_credentials",
]

#: View and feed parameters whose values CouchDB expects as JSON.
JSON_QUERY_PARAMS = frozenset(
    {"key", "keys", "startkey", "endkey", "start_key", "end_key", "doc_ids", "selector"}
)

_SPECIAL_PREFIXES = ("_design/", "_local/")
#: One label of an ASCII host name: letters, digits, ``-`` and ``_`` (service and
#: container names have it, and resolvers take it), no ``-`` first or last.
#: A port as written in a URL (``int()`` would also take other scripts' digits).
_PORT_DIGITS = re.compile(r"[0-9]+")
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@lru_cache(maxsize=4096)  # database names, ids and fixed segments repeat
def _segment(text: str) -> str:
    return quote(text, safe="")


def path_bytes(segments: Sequence[str], query: str = "") -> bytes:
    """The encoded path (``/a/b``) and query of raw segments, as request-target bytes."""
    path = "/" + "/".join([_segment(s) for s in segments])
    return (f"{path}?{query}" if query else path).encode("ascii")


def database_path(name: str) -> list[str]:
    """Path segments of a database (its name is one segment, ``/`` encoded)."""
    return [name]


def doc_path(db: str, doc_id: str) -> list[str]:
    """Path segments of a document, keeping ``_design/`` and ``_local/`` literal.

    Args:
        db: The database name.
        doc_id: Any document id that a URL can name (see Raises).

    Returns:
        Unencoded segments; :func:`join_url` encodes each of them.

    Raises:
        ValueError: The id is empty (the URL would name the database), or is (after
            ``_design/`` or ``_local/``) ``.`` or ``..``, which URL normalisation
            removes (RFC 3986, 6.2.2.3): a proxy on the way could turn ``DELETE
            /db/_design/..`` into ``DELETE /db``.
    """
    for prefix in _SPECIAL_PREFIXES:
        if doc_id.startswith(prefix) and len(doc_id) > len(prefix):
            return [db, prefix[:-1], _addressable(doc_id[len(prefix) :], "document id", doc_id)]
    return [db, _addressable(doc_id, "document id", doc_id)]


def attachment_path(db: str, doc_id: str, name: str) -> list[str]:
    """Path segments of an attachment; ``/`` in its name separates segments.

    Raises:
        ValueError: As :func:`doc_path`; or a part of the name between ``/`` is empty,
            ``.`` or ``..``.
    """
    return [*doc_path(db, doc_id), *(_addressable(part, "attachment name", name)
                                     for part in name.split("/"))]


def _addressable(segment: str, what: str, whole: str) -> str:
    if segment in ("", ".", ".."):
        raise ValueError(
            f"the {what} {whole!r} cannot be named in a URL: an empty, '.' or '..' path "
            "segment is dropped or resolved on the way to CouchDB"
        )
    return segment


def join_url(base: str, segments: Sequence[str], query: str = "") -> str:
    """Join an already-encoded base URL, raw path segments and an encoded query.

    Args:
        base: The server URL without credentials, e.g. ``http://127.0.0.1:5984``.
        segments: Raw (unencoded) path segments.
        query: An encoded query string without the leading ``?``.

    Returns:
        The full request URL.
    """
    path = "/".join(_segment(s) for s in segments)
    url = base.rstrip("/") + "/" + path
    return f"{url}?{query}" if query else url


class _JsonNull:
    """A JSON-valued parameter set to ``null`` on purpose (``None`` means "absent")."""

    def __repr__(self) -> str:
        return "JSON_NULL"


#: ``key=JSON_NULL`` asks for the rows whose key is ``null`` (``key=None`` drops it).
JSON_NULL: Final = _JsonNull()


class Verbatim(str):
    """A query value sent as it is written, whatever its parameter's name."""

    __slots__ = ()


def _query_value(name: str, value: Any) -> str:
    if isinstance(value, Verbatim):
        return str(value)
    if value is JSON_NULL:
        return "null"
    if name in JSON_QUERY_PARAMS:
        return deep_json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return deep_json.dumps(value, separators=(",", ":"))
    return str(value)


def encode_query(params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> str:
    """Encode query parameters as CouchDB expects them.

    JSON-valued parameters (``key``, ``startkey`` …) are JSON-encoded, booleans become
    ``true``/``false``, ``None`` values are dropped.

    Args:
        params: A mapping or pairs.

    Returns:
        The encoded query string (no leading ``?``).
    """
    if params is None:
        return ""
    items = params.items() if isinstance(params, Mapping) else params
    parts = []
    for name, value in items:
        if value is None:
            continue
        parts.append(f"{quote(name, safe='')}={quote(_query_value(name, value), safe='')}")
    return "&".join(parts)


def changes_query(params: Mapping[str, Any]) -> dict[str, Any]:
    """The query of a ``_changes`` request: no parameter of it is JSON.

    ``_changes`` takes ``doc_ids`` and ``selector`` in its body and has no ``key``; a
    parameter of that name is a filter function's own, which reads ``req.query`` as it
    was sent. So ``key="abc"`` goes as ``key=abc``, not as the JSON ``"abc"`` a view
    would take.
    """
    return {
        name: Verbatim(_query_value("", value))
        if name in JSON_QUERY_PARAMS and value is not None and value is not JSON_NULL
        else value
        for name, value in params.items()
    }


@lru_cache(maxsize=64)  # a transport is made per identity, always from the same URL
def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """Remove ``user:password@`` from a URL.

    Args:
        url: A server URL that may carry credentials.

    Returns:
        ``(url_without_credentials, username, password)``, credentials percent-decoded.

    Raises:
        ValueError: The port is not a number, or an ``@`` comes after the host (both
            mean a password with a character that was not percent-encoded); the
            message quotes nothing of the URL. Or the port is a number out of range
            (0, or above 65535), which the message names.
    """
    from urllib.parse import unquote

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    misplaced = "@" in parts.path or "@" in parts.query or "@" in parts.fragment
    host_and_port = parts.netloc.rpartition("@")[2]
    written = "" if host_and_port.endswith("]") else host_and_port.rpartition(":")[2]
    if not misplaced and port in (-1, 0) and _PORT_DIGITS.fullmatch(written):
        # Only digits after the host, and no "@" further on: a port, not a password.
        raise ValueError(f"port {written} is not a TCP port (1 to 65535)")
    if misplaced:
        # "user:1234/x@host": the password's digits parsed as a port, "admin" as the
        # host, and the rest of it as the path, printed with the URL.
        port = -1
    if port == -1:
        # Python's message quotes the "port", which is often part of a password with a
        # "/", "?" or "#" that was not percent-encoded: say what is wrong without it,
        # outside the handler, so that not even the exception's context holds it.
        raise ValueError(
            "the CouchDB URL's host and port are not where they should be (percent-encode "
            "'/', '?', '#' and '@' in a user name or password, and '@' in a path)"
        )
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return clean, username, password


def check_upstream_host(url: str) -> None:
    """Refuse a CouchDB URL whose host the gateway could never connect to.

    An IP address, or an ASCII host name of dot-separated labels (``_`` included:
    ``couch_db``, a docker compose service name, resolves on Docker's network). Over
    ``https://`` the name must also be one a certificate can be for (IDNA: no ``_``),
    since Twisted's TLS checks the certificate against its IDNA form.

    Args:
        url: The CouchDB URL (``split_credentials`` has accepted it).

    Raises:
        ValueError: Says what is wrong with the host; quotes nothing but the host.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return
    if not host.isascii():
        try:
            ascii_form = f" ({idna.encode(host, uts46=True).decode('ascii')})"
        except (idna.IDNAError, UnicodeError):
            ascii_form = ""
        raise ValueError(f"write the host {host!r} in its ASCII form{ascii_form}")
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{host!r} is not a host name (labels of letters, digits, '-' and '_', "
            "separated by dots, none starting or ending with '-')"
        )
    if parts.scheme == "https":
        try:
            idna.encode(host)  # as Twisted's TLS does, for the name it checks
        except (idna.IDNAError, UnicodeError):
            raise ValueError(
                f"{host!r}: an https:// host must be a name a certificate can be for "
                "(IDNA; no '_' in it): use http:// on a private network, or another name"
            ) from None
