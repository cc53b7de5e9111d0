"""The browser client's edge cases (tests/browser/client_edges.mjs) in Chromium: session
checks that answer late, reconnect backoff, unsubscribe, pings, cross-origin cookies."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from gateway.embedded import free_port
from tests.browser.test_demo import _call, _run_case
from tests.browser.test_demo import pytestmark as _browser_marks
from tests.conftest import CouchBackend
from tests.support.couchconfig import config_path

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


@contextmanager
def _session_timeout(backend: CouchBackend, seconds: int) -> Iterator[None]:
    """CouchDB's ``[chttpd_auth] timeout`` set to ``seconds`` for a block, then restored."""
    path = "/" + "/".join(config_path(backend.is_pouchdb, "chttpd_auth", "timeout"))
    previous = _call(backend, "PUT", path, str(seconds))
    try:
        yield
    finally:
        if previous in ("", None):
            _call(backend, "DELETE", path)
        else:
            _call(backend, "PUT", path, previous)


def test_client_token_outlives_the_session_timeout_while_active(couch_backend: CouchBackend) -> None:
    """A token client (``new Wallaby({token})``) subscribed with a small keepAliveMs stays
    signed in past CouchDB's session timeout: its touches get the refreshed token
    (``X-Wallaby-Token``), so a socket dropped after the login's token expired reconnects
    and resumes, and REST calls work; it was refused (`unauthenticated`) before."""
    seconds = 12
    with _session_timeout(couch_backend, seconds):
        _run_case(couch_backend, "client_token.mjs", "outlives", str(seconds))
