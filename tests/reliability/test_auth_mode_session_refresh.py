"""An active browser session keeps living, in ``forward`` and ``proxy`` mode alike.

gateway/http/session.py: "The gateway's session cookie is set, refreshed and cleared as
CouchDB would set its own ``AuthSession``." CouchDB (``couch_httpd_auth``
``cookie_auth_header``) sends a fresh ``AuthSession`` with any answer to a request its
cookie authenticated once 10 % of ``[chttpd_auth] timeout`` (600 s) has passed, so an
active user is never logged out; an idle one is after the timeout.

The recording CouchDB stand-in (``tests/support/couch_auth_standin.py``) does the same with a
timeout of 8 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from tests.reliability.authmodes import SECRET, spawn_in_mode
from tests.reliability.conftest import GatewayProcess, http
from tests.support.couch_auth_standin import CouchAuthStandIn

TIMEOUT = 8.0


@pytest.fixture
def fake() -> Iterator[CouchAuthStandIn]:
    couch = CouchAuthStandIn(secret=SECRET, session_timeout=TIMEOUT).start()
    couch.add_user("bob", "pw", ["editor"])
    couch.add_db("alpha", roles=["editor"])
    couch.put_doc("alpha", "d1", {"v": 1})
    yield couch
    couch.stop()


@pytest.mark.parametrize("mode", ["forward", "proxy"])
def test_an_active_cookie_session_is_refreshed(
    fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess], mode: str,
) -> None:
    """A browser reading a document every second for twice the session timeout.

    forward: every upstream request carries the cookie, CouchDB's refreshed cookie is
    handed back (``ForwardedAuth.observe`` → ``session_refresh``): 200 throughout.
    proxy: upstream requests carry proxy headers; the only cookie request is the
    identity check (``GET /_session``, every 5 s), whose refreshed cookie is dropped with
    the ``ForwardedAuth`` it came through (gateway/identity.py ``_verify`` keeps only a
    ``ProxyAuth``, which has no ``session``): the user is logged out ``timeout`` after
    logging in, however active.
    """
    gateway = spawn_in_mode(fake.url, tmp_path, gateways, mode)
    login = http("POST", gateway.url + "/api/v1/session", {"name": "bob", "password": "pw"})
    assert login.status == 200, login.body
    cookie = login.json["token"]
    statuses: list[tuple[float, int]] = []
    renewals = 0
    start = time.monotonic()
    while time.monotonic() - start < 2 * TIMEOUT:
        answer = http("GET", gateway.url + "/api/v1/db/alpha/docs/d1", None,
                      {"Cookie": f"wallaby_session={cookie}"})
        statuses.append((round(time.monotonic() - start, 1), answer.status))
        jar: SimpleCookie = SimpleCookie()
        jar.load(answer.headers.get("Set-Cookie") or "")
        if "wallaby_session" in jar and jar["wallaby_session"].value:
            cookie, renewals = jar["wallaby_session"].value, renewals + 1
        time.sleep(1.0)
    failed = [(t, s) for t, s in statuses if s != 200]
    assert not failed, (f"{mode}: an active session was logged out; renewals handed back: "
                        f"{renewals}; (seconds, status): {statuses}")


@pytest.mark.parametrize("mode", ["forward", "proxy", "jwt"])
def test_an_active_bearer_session_is_refreshed(
    fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess], mode: str,
) -> None:
    """A token client (``Authorization: Bearer``) reading a document every second for
    twice the session timeout, adopting ``X-Wallaby-Token`` whenever it comes: 200
    throughout, in every mode a session token means a CouchDB session (in ``jwt`` mode,
    a bearer that is not a JWT). A document's answer may be kept by the browser
    (``private, no-cache``), but not one carrying a token."""
    gateway = spawn_in_mode(fake.url, tmp_path, gateways, mode)
    login = http("POST", gateway.url + "/api/v1/session", {"name": "bob", "password": "pw"})
    assert login.status == 200, login.body
    token = login.json["token"]
    statuses: list[tuple[float, int]] = []
    renewals = 0
    start = time.monotonic()
    while time.monotonic() - start < 2 * TIMEOUT:
        answer = http("GET", gateway.url + "/api/v1/db/alpha/docs/d1", None,
                      {"Authorization": f"Bearer {token}"})
        statuses.append((round(time.monotonic() - start, 1), answer.status))
        assert not answer.headers.get("Set-Cookie"), "a bearer client gets no cookie"
        fresh = answer.headers.get("X-Wallaby-Token")
        if fresh:
            assert fresh != token
            # Never stored: a browser would replay a stored answer's (older) token on a 304.
            assert answer.headers.get("Cache-Control") == "no-store", answer.headers
            token, renewals = fresh, renewals + 1
        time.sleep(1.0)
    failed = [(t, s) for t, s in statuses if s != 200]
    assert not failed, (f"{mode}: an active token session was logged out; renewals handed "
                        f"back: {renewals}; (seconds, status): {statuses}")
    assert renewals >= 1
