"""Inline attachments in document bodies: each one has its data, or is a stub.

CouchDB reads an entry of a document's ``_attachments`` as a stub (``"stub": true``,
keep the stored attachment) or as inline data (``"data"``: base64, with an optional
``content_type``), and answers 400 ``Invalid attachment data`` for anything else.
pouchdb-server, the embedded development server, crashes on an entry with neither.
The gateway refuses such a document itself, with CouchDB's status, before it goes
upstream; likewise inline data that is not base64 (pouchdb-server answers 500).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from typing import Any

from gateway.errors import InvalidRequest

__all__ = ["check_inline_attachments"]


def check_inline_attachments(docs: Iterable[Any]) -> None:
    """Refuse any document with an attachment entry that is neither a stub nor data.

    Args:
        docs: Document bodies (anything not a JSON object is left to the contract).

    Raises:
        InvalidRequest: An entry without ``"stub": true`` or a string ``data``.
    """
    for doc in docs:
        attachments = doc.get("_attachments") if isinstance(doc, dict) else None
        if not isinstance(attachments, dict):
            continue
        for name, entry in attachments.items():
            if not isinstance(entry, dict) or not (
                    entry.get("stub") is True or isinstance(entry.get("data"), str)):
                raise InvalidRequest(
                    f"invalid attachment data for {name!r}: an inline attachment needs "
                    "'data' (base64) or '\"stub\": true'")
            if entry.get("stub") is not True and not _is_base64(entry["data"]):
                raise InvalidRequest(f"invalid attachment data for {name!r}: 'data' is not base64")


def _is_base64(data: str) -> bool:
    """Whether ``data`` is base64 as CouchDB decodes it (pouchdb-server answered 500)."""
    try:  # whitespace (line breaks of MIME-style base64) is ignored, as by CouchDB
        binascii.a2b_base64("".join(data.split()).encode("ascii"), strict_mode=True)
    except (ValueError, UnicodeEncodeError):
        return False
    return True
