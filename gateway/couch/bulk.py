"""Pairing ``_bulk_docs`` answers with the documents that were sent."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import UpstreamServerError

__all__ = ["align_bulk_results", "in_request_order"]


def align_bulk_results(
    docs: Sequence[Mapping[str, Any]], results: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Return the ``_bulk_docs`` results in the order of ``docs``, one per document.

    CouchDB answers in request order, but other CouchDB-compatible servers do not always
    (pouchdb-server can swap the results of two documents), so results are paired by id.
    Several documents with the same ``_id`` take that id's results in order. A document
    without an ``_id`` takes, in order, the results whose ids no document named: exact
    with CouchDB, a guess with a server that reorders (give documents ids to be sure).

    Args:
        docs: The documents as sent.
        results: The server's answer: one ``{"id", "rev"}`` or ``{"id", "error"}`` each.

    Raises:
        UpstreamServerError: The answer cannot be paired with the documents (a result is
            missing, or an id was never sent).
    """
    if len(results) != len(docs):
        raise _unpaired(f"{len(results)} results for {len(docs)} documents")
    named = {doc["_id"] for doc in docs if _named(doc)}
    by_id: dict[Any, deque[dict[str, Any]]] = defaultdict(deque)
    anonymous: deque[dict[str, Any]] = deque()
    for result in results:
        (by_id[result.get("id")] if result.get("id") in named else anonymous).append(result)
    aligned = []
    for doc in docs:
        queue = by_id[doc["_id"]] if _named(doc) else anonymous
        if not queue:
            raise _unpaired(f"no result for document {doc.get('_id')!r}")
        aligned.append(queue.popleft())
    return aligned


def _named(doc: Mapping[str, Any]) -> bool:
    doc_id = doc.get("_id")
    return isinstance(doc_id, str) and doc_id != ""


def _unpaired(reason: str) -> UpstreamServerError:
    return UpstreamServerError(
        f"the _bulk_docs answer does not match the request: {reason}",
        error="bad_bulk_answer",
        status=502,
    )


def in_request_order(request: Any, answer: Any) -> Any:
    """A ``_bulk_docs`` answer with its results in the order of the request's documents.

    For the REST proxy, which promises CouchDB's order to its clients whatever server is
    behind it, for every document with an ``_id`` (the proxy does not change requests, so
    documents without one keep the server's order among themselves). The documents are
    already written, so an answer that cannot be paired (or one to a request with
    ``new_edits: false``) is left as it is rather than refused.

    Args:
        request: The request body (``{"docs": [...], ...}``).
        answer: The server's decoded answer.

    Returns:
        ``answer`` itself when it is in order or cannot be paired, else a reordered list.
    """
    docs = request.get("docs") if isinstance(request, Mapping) else None
    if (
        not isinstance(docs, list)
        or not isinstance(answer, list)
        or request.get("new_edits") is False
        or not all(isinstance(doc, Mapping) for doc in docs)
        or not all(isinstance(result, dict) for result in answer)
    ):
        return answer
    try:
        aligned = align_bulk_results(docs, answer)
    except UpstreamServerError:
        return answer
    in_order = all(mine is theirs for mine, theirs in zip(aligned, answer, strict=True))
    return answer if in_order else aligned
