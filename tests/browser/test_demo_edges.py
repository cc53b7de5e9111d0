"""The demo page (gateway/static/demo.js, tests/browser/demo_edges.mjs) in Chromium: errors
clearing, late save answers, quick clicks, design documents."""

from __future__ import annotations

import pytest

from tests.browser.test_demo import Member, _call, _run_case
from tests.browser.test_demo import pytestmark as _browser_marks
from tests.conftest import CouchBackend

pytestmark = _browser_marks


@pytest.mark.parametrize("case", ["error_open", "late_reply", "clicks_undo", "clicks_three"])
def test_demo_edges(couch_backend: CouchBackend, case: str) -> None:
    """error_open: an error clears once the live socket is open again; late_reply: a late
    PUT answer does not replace a newer revision the feed already showed; clicks_undo /
    clicks_three: clicks during a slow save end as the last click says, without a conflict."""
    _run_case(couch_backend, "demo_edges.mjs", case)


def test_demo_hides_design_documents(couch_backend: CouchBackend) -> None:
    """A design document (written by an admin) is not an item of the list."""
    def design_doc(member: Member) -> None:
        _call(couch_backend, "PUT", f"/{member.db}/_design/app", {"views": {"all": {
            "map": "function (doc) { emit(doc._id, null); }"}}})

    _run_case(couch_backend, "demo_edges.mjs", "design_doc", prepare=design_doc)
