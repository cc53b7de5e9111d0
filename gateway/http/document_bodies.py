"""Document bodies CouchDB refuses with 400, refused here before they go upstream.

pouchdb-server, the embedded development server, crashes (500) on some bodies CouchDB
refuses as the client's mistake; the gateway refuses them itself, with CouchDB's status:

* **Special members.** A top-level member starting with ``_`` other than CouchDB's own
  (``_id``, ``_rev``, ``_deleted``, ``_attachments`` …) is ``doc_validation`` "Bad
  special document member" (``couch_doc:transfer_fields``).
* **Ids that are not Unicode.** A JSON escape can spell a lone surrogate (``d800``
  without its pair), which no UTF-8 URL can name: a document stored under such an
  ``_id`` could never be read, updated or deleted again through the API.
* **Inline attachments.** CouchDB reads an entry of ``_attachments`` as a stub
  (``"stub": true``, keep the stored attachment) or as inline data (``"data"``:
  base64, with an optional ``content_type``), and answers 400 ``Invalid attachment
  data`` for anything else, inline data that is not base64 included.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from typing import Any

from gateway.errors import InvalidRequest

__all__ = ["SPECIAL_MEMBERS", "check_documents"]

#: The ``_`` members CouchDB takes in a document body (some only to ignore them).
SPECIAL_MEMBERS = frozenset({
    "_id", "_rev", "_deleted", "_attachments", "_revisions", "_revs_info", "_conflicts",
    "_deleted_conflicts", "_local_seq",
})


def check_documents(docs: Iterable[Any]) -> None:
    """Refuse any document body CouchDB would refuse as malformed (see the module docs).

    Args:
        docs: Document bodies (anything not a JSON object is left to the contract).

    Raises:
        InvalidRequest: An unknown special member, an ``_id`` that is not valid
            Unicode, or an attachment entry without ``"stub": true`` or base64 ``data``.
    """
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        doc_id = doc.get("_id")
        if isinstance(doc_id, str) and not _is_unicode(doc_id):
            raise InvalidRequest("'_id' is not valid Unicode (a lone surrogate escape): no "
                                 "URL could name the document")
        for member in doc:
            if member.startswith("_") and member not in SPECIAL_MEMBERS:
                raise InvalidRequest(f"Bad special document member: {member}",
                                     error="doc_validation")
        attachments = doc.get("_attachments")
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


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
