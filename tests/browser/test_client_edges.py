"""The browser client's edge cases (tests/browser/client_edges.mjs) in Chromium: session
checks that answer late, reconnect backoff, unsubscribe, pings, cross-origin cookies."""

from __future__ import annotations

import pytest

from gateway.embedded import free_port
from tests.browser.test_demo import _run_case
from tests.browser.test_demo import pytestmark as _browser_marks
from tests.conftest import CouchBackend

pytestmark = _browser_marks


@pytest.mark.parametrize("case", ["backoff_reset", "backoff_open", "backoff_cap", "unsubscribe",
                                  "pong", "put_rev", "relogin_close", "keepalive", "waiting"])
def test_client_edges(couch_backend: CouchBackend, case: str) -> None:
    """backoff_reset: an accepted subscription resets the reconnect backoff; backoff_open:
    sockets closed before any subscription is accepted back off (no tight loop);
    backoff_cap: no wait over maxBackoff; unsubscribe: the gateway is told; pong: answered
    pings keep the socket; put_rev: put() sets doc._rev; relogin_close: a slow close of the
    old socket does not orphan the new one; keepalive: the session is touched only while
    subscribed; waiting: after "unauthenticated" a new subscription waits for login()."""
    _run_case(couch_backend, "client_edges.mjs", case)


def test_client_stale_session_check_after_login(couch_backend: CouchBackend) -> None:
    """A session check sent while logged out (a refused socket) that answers 401 only after
    login() succeeded must not put the client back to "unauthenticated"."""
    _run_case(couch_backend, "client_edges.mjs", "stale_check")


def test_client_cross_origin_cookie(couch_backend: CouchBackend) -> None:
    """A page on another origin of the same site, listed in WALLABY_CORS_ORIGINS, using
    ``new Wallaby({baseUrl})``: the cookie login() gets is sent with later calls."""
    page_port = free_port()
    _run_case(couch_backend, "client_edges.mjs", "cross_origin", str(page_port),
              WALLABY_CORS_ORIGINS=f"http://127.0.0.1:{page_port}")
