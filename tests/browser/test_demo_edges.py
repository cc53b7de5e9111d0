"""The demo page (gateway/static/demo.js, tests/browser/demo_edges.mjs) in Chromium: errors
clearing, late save answers, quick clicks, design documents, logging in again, conflicts."""

from __future__ import annotations

import pytest

from tests.browser.test_demo import Member, _call, _member_of_new_database, _run_case
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


def _two_branches(couch_backend: CouchBackend, member: Member) -> None:
    """Document "a" with two generation-1 branches (a replication conflict): "winner" wins."""
    _call(couch_backend, "POST", f"/{member.db}/_bulk_docs", {"new_edits": False, "docs": [
        {"_id": "a", "_rev": f"1-{'f' * 32}", "title": "winner", "done": False, "created": "1"},
        {"_id": "a", "_rev": f"1-{'1' * 32}", "title": "loser", "done": False, "created": "1"},
    ]})


def test_demo_lists_a_conflict_branch_after_its_own_write_was_seen(
    couch_backend: CouchBackend,
) -> None:
    """Once the feed brought the page's own write, the page stops treating lower revisions
    of that document as late echoes of it: another client deleting that revision brings
    back the document's other branch (generation 1), and the page lists it."""
    _run_case(couch_backend, "demo_edges.mjs", "conflict",
              prepare=lambda member: _two_branches(couch_backend, member))


def test_demo_lists_the_conflict_branch_its_own_delete_brought_back(
    couch_backend: CouchBackend,
) -> None:
    """The page deletes the winning branch of a conflicted document: the feed brings the
    other branch (generation 1, below the page's generation-2 tombstone) and the page lists
    it. It used to take it for a late echo of something older than its own delete, hide the
    document for good (until a write of generation 2 or more) and keep its entry in the map
    of its own writes for the life of the page."""
    _run_case(couch_backend, "demo_edges.mjs", "conflict_own_delete",
              prepare=lambda member: _two_branches(couch_backend, member))


def test_demo_another_user_logging_in_ends_the_old_subscription(couch_backend: CouchBackend) -> None:
    """The session ended and another member of the database logs in at the same page: the
    list starts again for them, and the first user's subscription ends (the gateway holds
    one, not two)."""
    other = _member_of_new_database(couch_backend)

    def both_members(member: Member) -> None:
        _call(couch_backend, "PUT", f"/{member.db}/_security",
              {"members": {"names": [member.name, other.name], "roles": []}})

    try:
        _run_case(couch_backend, "demo_edges.mjs", "switch_user", other.name, other.password,
                  prepare=both_members)
    finally:
        _call(couch_backend, "DELETE", f"/{other.db}")


def test_demo_same_user_logging_in_again_resumes_the_list(couch_backend: CouchBackend) -> None:
    """The session ended and the same user logs in again: the list goes on from where it
    stopped (its rows stay, no subscription from the start again)."""
    _run_case(couch_backend, "demo_edges.mjs", "same_user")


def test_demo_forgets_its_writes_once_the_feed_brought_them(couch_backend: CouchBackend) -> None:
    """The page's map of the revisions its own writes replaced (to tell late echoes from
    news) is emptied as the feed brings each write back, instead of growing for the life of
    the page; read from demo.js's module scope through the DevTools protocol."""
    _run_case(couch_backend, "demo_edges.mjs", "pruned")
