"""View paths, view parameters and view results (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.couch.urls import JSON_NULL

__all__ = ["ViewResult", "split_view_params", "view_path"]

#: Parameters whose value is one view key (``null`` among them).
_KEY_PARAMS = frozenset({"key", "startkey", "endkey", "start_key", "end_key"})


class ViewResult(list[Any]):
    """The rows of a view as a list, with the view's metadata as attributes.

    Attributes:
        total_rows: Rows in the whole view (``None`` when CouchDB did not say, e.g. reduce).
        offset: Index of the first returned row (``None`` when absent).
        update_seq: The view's update sequence when ``update_seq=true`` was asked (opaque).
        raw: The whole JSON answer.
    """

    def __init__(self, answer: Mapping[str, Any]) -> None:
        super().__init__(answer.get("rows", []))
        self.total_rows: int | None = answer.get("total_rows")
        self.offset: int | None = answer.get("offset")
        self.update_seq: Any = answer.get("update_seq")
        self.raw: Mapping[str, Any] = answer


def view_path(db: str, name: str) -> list[str]:
    """Path segments of a view.

    Accepts ``_design/d/_view/v``, the short ``d/v``, and the special views
    ``_all_docs`` and ``_design_docs``.

    Raises:
        ValueError: The name is not a view name.
    """
    if name in ("_all_docs", "_design_docs", "_local_docs"):
        return [db, name]
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "_design" and parts[2] == "_view":
        return [db, "_design", parts[1], "_view", parts[3]]
    if len(parts) == 2 and all(parts):
        return [db, "_design", parts[0], "_view", parts[1]]
    raise ValueError(f"not a view name: {name!r} (use '_design/ddoc/_view/view' or 'ddoc/view')")


def split_view_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Separate view parameters into query parameters and a POST body.

    ``count`` (the original Wallaby name) becomes ``limit``; ``keys`` goes into the body,
    since a long key list does not fit a URL. A JSON-valued parameter given as ``None``
    (``key=None``) asks for the JSON ``null`` key, which CouchDB's collation allows.

    Returns:
        ``(query, body)``; ``body`` is ``None`` when a GET suffices.
    """
    query: dict[str, Any] = {
        name: JSON_NULL if value is None and name in _KEY_PARAMS else value
        for name, value in params.items()
    }
    if "count" in query:
        count = query.pop("count")
        query.setdefault("limit", count)
    keys = query.pop("keys", None)
    body = {"keys": list(keys)} if keys is not None else None
    return query, body
