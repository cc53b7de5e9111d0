"""The browser client's edge cases (tests/browser/client_edges.mjs) in Chromium: session
checks that answer late, reconnect backoff, unsubscribe, pings, cross-origin cookies."""

from __future__ import annotations

from tests.browser.test_demo import _run_case
from tests.browser.test_demo import pytestmark as _browser_marks
from tests.conftest import CouchBackend

pytestmark = _browser_marks


def test_client_stale_session_check_after_login(couch_backend: CouchBackend) -> None:
    """A session check sent while logged out (a refused socket) that answers 401 only after
    login() succeeded must not put the client back to "unauthenticated"."""
    _run_case(couch_backend, "client_edges.mjs", "stale_check")
