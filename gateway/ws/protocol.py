"""The live-changes message layer, sans I/O.

Parses and validates client messages against the JSON Schemas in ``api_schema/ws/``
and builds server messages (plain dicts, serialised with :func:`encode`). Nothing here
touches a socket, a reactor or CouchDB, so every rule is unit-testable.

Seqs are opaque: they are passed through exactly as CouchDB produced them (strings on
CouchDB 3, integers on pouchdb-server) and never compared.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

from gateway import deep_json
from gateway.errors import error_body
from gateway.schemas import api_schema_dir

__all__ = [
    "CLIENT_TYPES",
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SESSION_INVALID",
    "CLOSE_SLOW_CONSUMER",
    "SERVER_TYPES",
    "FeedParams",
    "Ping",
    "ProtocolError",
    "Seq",
    "Subscribe",
    "Unsubscribe",
    "change_message",
    "closing_message",
    "encode",
    "error_message",
    "exception_message",
    "feed_state_message",
    "parse_client_message",
    "pong_message",
    "schema_dir",
    "subscribed_message",
    "unsubscribed_message",
    "validator",
]

#: An opaque CouchDB update sequence (string on CouchDB 3, integer on pouchdb-server).
Seq = str | int

#: Close codes (documented in ``api_schema/asyncapi.yaml``).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_SESSION_INVALID = 4001
CLOSE_SLOW_CONSUMER = 4008

CLIENT_TYPES = ("subscribe", "unsubscribe", "ping")
#: Arrays and objects a client message may nest (a Mango selector needs a few).
MAX_NESTING = 64
SERVER_TYPES = (
    "subscribed", "unsubscribed", "change", "feed_state", "error", "pong", "closing",
)

_MAX_REASON = 300


def schema_dir() -> Path:
    """The folder holding the message schemas (``api_schema/ws``)."""
    return api_schema_dir() / "ws"


@cache
def validator(message_type: str) -> Draft202012Validator:
    """The (cached) validator of one message type's schema.

    Raises:
        FileNotFoundError: No schema for that type.
    """
    path = schema_dir() / f"{message_type}.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


class ProtocolError(Exception):
    """A client message is refused; the connection carries on.

    Attributes:
        error: Machine-readable code (``bad_message``, ``unknown_type``, …).
        reason: Human-readable explanation.
        sub_id: The subscription id the message named, when known.
    """

    def __init__(self, error: str, reason: str, sub_id: str | None = None) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason[:_MAX_REASON]
        self.sub_id = sub_id

    def message(self) -> dict[str, Any]:
        """The ``error`` message reporting this refusal."""
        return error_message(self.error, self.reason, sub_id=self.sub_id, status=400)


@dataclass(frozen=True)
class FeedParams:
    """The parameters that select one shared upstream feed (besides the database).

    Attributes:
        filter: ``_doc_ids``, ``_selector``, ``_view``, ``ddoc/name`` or ``None``.
        doc_ids: Sorted document ids for ``_doc_ids``.
        selector: Mango selector for ``_selector``.
        view: ``ddoc/view`` for ``_view``.
        query: Extra query parameters for a design filter.
        include_docs: Whether changes carry the documents.
        design_rev: For a design filter or ``_view``, the ``_rev`` of the design document
            the subscription was authorised against (``None`` until then, and for the
            other filters). CouchDB reads a design filter's code when a feed starts, so
            feeds of two revisions are two feeds: a subscriber never joins one that
            runs older code than it saw.
    """

    filter: str | None = None
    doc_ids: tuple[str, ...] = ()
    selector: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    view: str | None = None
    query: tuple[tuple[str, str], ...] = ()
    include_docs: bool = False
    design_rev: str | None = None
    _selector_key: str = field(default="", repr=False)

    @classmethod
    def build(
        cls,
        filter: str | None = None,
        doc_ids: list[str] | None = None,
        selector: Mapping[str, Any] | None = None,
        view: str | None = None,
        query: Mapping[str, str] | None = None,
        include_docs: bool = False,
    ) -> FeedParams:
        """Normalise parameters so that equivalent subscriptions share a key."""
        return cls(
            filter=filter,
            doc_ids=tuple(sorted(set(doc_ids or ()))),
            selector=selector,
            view=view,
            query=tuple(sorted((query or {}).items())),
            include_docs=include_docs,
            _selector_key=json.dumps(selector, sort_keys=True) if selector is not None else "",
        )

    def at_revision(self, rev: str | None) -> FeedParams:
        """These options, on the design document revision ``rev`` (see ``design_rev``)."""
        return dataclasses.replace(self, design_rev=rev)

    @property
    def design_doc(self) -> tuple[str, str, str] | None:
        """``(ddoc, member, kind)`` for design filters and views, else ``None``."""
        if self.filter == "_view" and self.view:
            ddoc, name = self.view.split("/", 1)
            return ddoc, name, "views"
        if self.filter and not self.filter.startswith("_"):
            ddoc, name = self.filter.split("/", 1)
            return ddoc, name, "filters"
        return None

    def changes_params(self) -> dict[str, Any]:
        """Query parameters of ``_changes`` for these options (without since/feed)."""
        params: dict[str, Any] = {}
        if self.filter is not None:
            params["filter"] = self.filter
        if self.view is not None:
            params["view"] = self.view
        if self.include_docs:
            params["include_docs"] = "true"
        for name, value in self.query:
            params.setdefault(name, value)
        return params

    def changes_body(self) -> dict[str, Any] | None:
        """The JSON body ``_changes`` needs (``doc_ids`` or ``selector``), or ``None``."""
        if self.filter == "_doc_ids":
            return {"doc_ids": list(self.doc_ids)}
        if self.filter == "_selector":
            return {"selector": self.selector}
        return None


@dataclass(frozen=True)
class Subscribe:
    """A valid ``subscribe`` message."""

    id: str
    db: str
    since: Seq | None
    params: FeedParams

    @property
    def catch_up(self) -> bool:
        """Whether the subscription resumes from a seq (rather than from now)."""
        return self.since is not None and self.since != "now"


@dataclass(frozen=True)
class Unsubscribe:
    """A valid ``unsubscribe`` message."""

    id: str


@dataclass(frozen=True)
class Ping:
    """A valid ``ping`` message."""

    data: str | float | int | None = None


ClientMessage = Subscribe | Unsubscribe | Ping


def parse_client_message(payload: bytes | str) -> ClientMessage:
    """Decode and validate one client frame.

    Args:
        payload: The frame's text.

    Returns:
        The message.

    Raises:
        ProtocolError: Not JSON, not an object, unknown ``type``, or a schema violation.
    """
    try:
        raw = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        data = json.loads(raw)
    except RecursionError:
        raise ProtocolError("bad_message", f"nested more than {MAX_NESTING} levels deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("bad_message", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object")
    if _nesting(data) > MAX_NESTING:
        # Parsed, but every later step (the schema, CouchDB's request body, a pong) would
        # recurse as deep, and a shared feed would fail with it long after `subscribed`.
        raise ProtocolError("bad_message", f"nested more than {MAX_NESTING} levels deep",
                            data.get("id") if isinstance(data.get("id"), str) else None)
    kind = data.get("type")
    sub_id = data.get("id") if isinstance(data.get("id"), str) else None
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type",
            f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}",
            sub_id,
        )
    error = next(iter(sorted(validator(kind).iter_errors(data), key=lambda e: e.path)), None)
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "message"
        raise ProtocolError("bad_message", f"invalid {kind} ({where}): {error.message}", sub_id)
    if kind == "subscribe":
        if isinstance(data.get("since"), float):
            # JSON Schema's "integer" takes 1e308 and 2.0; CouchDB's seqs never look so.
            raise ProtocolError("bad_message", "invalid subscribe (since): a number seq must "
                                "be written as a whole number, without a fraction or exponent",
                                sub_id)
        params = FeedParams.build(
            filter=data.get("filter"),
            doc_ids=data.get("doc_ids"),
            selector=data.get("selector"),
            view=data.get("view"),
            query=data.get("query"),
            include_docs=bool(data.get("include_docs", False)),
        )
        return Subscribe(data["id"], data["db"], data.get("since"), params)
    if kind == "unsubscribe":
        return Unsubscribe(data["id"])
    return Ping(data.get("data"))


def _nesting(value: Any) -> int:
    """How many arrays and objects deep ``value`` goes (without recursing)."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def encode(message: Mapping[str, Any]) -> bytes:
    r"""Serialise a server message (compact UTF-8 JSON).

    A string holding a lone surrogate (``"\ud800"``: JSON allows the escape,
    pouchdb-server stores it, UTF-8 cannot carry it) is sent as that escape, as CouchDB's
    own answers send it.
    """
    text = deep_json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return deep_json.dumps(message, separators=(",", ":")).encode("ascii")


def subscribed_message(sub_id: str, db: str, feed: str, since: Seq | None) -> dict[str, Any]:
    """``subscribed``: the subscription is active."""
    message: dict[str, Any] = {"type": "subscribed", "id": sub_id, "db": db, "feed": feed}
    if since is not None:
        message["since"] = since
    return message


def unsubscribed_message(sub_id: str) -> dict[str, Any]:
    """``unsubscribed``: the subscription ended at the client's request."""
    return {"type": "unsubscribed", "id": sub_id}


def change_message(feed: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """``change`` from one ``_changes`` row.

    Args:
        feed: The shared feed's id.
        row: The row (``seq``, ``id``, ``changes``, optional ``deleted`` and ``doc``).
    """
    message: dict[str, Any] = {
        "type": "change",
        "feed": feed,
        "seq": row["seq"],
        "id": row["id"],
        "changes": [{"rev": c["rev"]} for c in row.get("changes", ())] or [{"rev": ""}],
        "deleted": bool(row.get("deleted", False)),
    }
    if "doc" in row:
        message["doc"] = row["doc"]
    return message


def feed_state_message(feed: str, state: str, reason: str | None = None) -> dict[str, Any]:
    """``feed_state``: the shared feed is ``interrupted`` or ``live`` again."""
    message: dict[str, Any] = {"type": "feed_state", "feed": feed, "state": state}
    if reason:
        message["reason"] = reason[:_MAX_REASON]
    return message


def error_message(
    error: str, reason: str, *, sub_id: str | None = None, status: int | None = None
) -> dict[str, Any]:
    """``error``, optionally about one subscription."""
    message: dict[str, Any] = {"type": "error", "error": error, "reason": reason[:_MAX_REASON]}
    if sub_id is not None:
        message["id"] = sub_id
    if status is not None:
        message["status"] = status
    return message


def exception_message(exc: BaseException, sub_id: str | None = None) -> dict[str, Any]:
    """``error`` for any exception, mapped through the one error hierarchy."""
    status, body, _headers = error_body(exc)
    return error_message(body["error"], body["reason"], sub_id=sub_id, status=status)


def pong_message(data: str | float | int | None) -> dict[str, Any]:
    """``pong`` echoing the ping's data."""
    message: dict[str, Any] = {"type": "pong"}
    if data is not None:
        message["data"] = data
    return message


def closing_message(code: int, reason: str, resume: Mapping[str, Seq | None]) -> dict[str, Any]:
    """``closing``: the resume seq of every subscription, sent before a server close."""
    return {"type": "closing", "code": code, "reason": reason, "resume": dict(resume)}
