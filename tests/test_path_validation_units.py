"""Name validation (gateway/http/paths.py): length limits, reserved names, empty ids,
``%`` in body ids, ``_``-names of attachments, design names.
"""

from __future__ import annotations

import pytest

from gateway.errors import AccessDenied, InvalidRequest
from gateway.http import paths


def test_database_names_up_to_238_characters() -> None:
    """CouchDB's limit (couch_db max_dbname_length, 238). Guards against: ``> 239``."""
    assert paths.database_name("a" * 238) == "a" * 238
    with pytest.raises(InvalidRequest):
        paths.database_name("a" * 239)


@pytest.mark.parametrize("raw", ["%2F_users", "%2F%2F_replicator", "%2F_config"])
def test_a_system_name_behind_slashes_is_refused_as_a_system_name(raw: str) -> None:
    """docs/rest-api.md: system and '_'-prefixed names are refused (403), not 400.

    Guards against: the ``lstrip("/")`` check dropped (a 400 "invalid name" instead)."""
    with pytest.raises(AccessDenied):
        paths.database_name(raw)


def test_an_empty_body_id_is_refused() -> None:
    """Guards against: document_id's ``if not doc_id`` dropped."""
    with pytest.raises(InvalidRequest, match="empty"):
        paths.body_document_id("")
    with pytest.raises(InvalidRequest, match="empty"):
        paths.document_id("")


def test_database_names_start_with_a_letter() -> None:
    """CouchDB: ``^[a-z][a-z0-9_$()+/-]*$``. Guards against: a digit first is taken."""
    with pytest.raises(InvalidRequest):
        paths.database_name("1db")
    assert paths.database_name("a1db") == "a1db"


@pytest.mark.parametrize("raw", ["_x.txt", "%5Fx.txt", "_"])
def test_attachment_names_may_not_start_with_an_underscore(raw: str) -> None:
    """CouchDB 3: "Attachment name can't start with '_'". Guards against: the check dropped
    (pouchdb-server refuses it too, so only the unit level tells)."""
    with pytest.raises(InvalidRequest, match="start with '_'"):
        paths.attachment_name(raw)


@pytest.mark.parametrize("raw", ["%2E", "%2e", "."])
def test_a_design_or_view_name_of_a_dot_is_refused(raw: str) -> None:
    """Guards against: design_name's ``name in (".", "..")`` reduced to ``".."``. A '.' segment is
    removed by URL normalisation on the way upstream (``_design/./_view/v``)."""
    with pytest.raises(InvalidRequest, match="one non-empty path segment"):
        paths.design_name(raw)
    with pytest.raises(InvalidRequest):
        paths.design_name(raw, "the view name")


def test_a_trailing_slash_is_named_as_such() -> None:
    """Guards against: the trailing-'/' check dropped (the request is still refused, but as an
    empty '//' segment, which misleads: the client wrote no '//')."""
    for raw in (b"/api/v1/health/", b"/api/v1/db/x/docs/y/"):
        with pytest.raises(InvalidRequest, match="must not end with '/'"):
            paths.check_raw_path(raw)
    paths.check_raw_path(b"/")
    with pytest.raises(InvalidRequest, match="empty path segments"):
        paths.check_raw_path(b"/api//v1")
