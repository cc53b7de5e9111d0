"""Cross-site WebSocket hijacking, attempted in Chromium (tests/browser/cross_site_ws.mjs).

The user logged in on the gateway's own page (the demo), and the browser sends the session
cookie (``SameSite=None``) with a handshake whatever page opens it: the handshake's
``Origin`` alone keeps a page of another site (``http://localhost:<port>``, the gateway
being ``http://127.0.0.1:<port>``) from following the user's database with it
(gateway/ws/handshake.py, docs/websocket.md "Handshake").
"""

from __future__ import annotations

import urllib.request

import pytest

from gateway.embedded import free_port
from tests.browser.test_demo import (
    _browser_script,
    _clean_up,
    _member_of_new_database,
    _start_gateway,
)
from tests.browser.test_demo import pytestmark as _browser_marks
from tests.conftest import CouchBackend

pytestmark = _browser_marks


def _metrics(port: int) -> dict[str, float]:
    """The gateway's /metrics: each sample's value by its name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _attack(couch_backend: CouchBackend, page: str, outcome: str, *,
            listed: bool = False, **settings: str) -> dict[str, float]:
    """Runs the script (``page``, ``outcome``: see cross_site_ws.mjs) against a gateway whose
    cookie is ``SameSite=None``; ``listed``: the attacker's origin is in
    ``WALLABY_CORS_ORIGINS``. The gateway's metrics after it."""
    member = _member_of_new_database(couch_backend)
    port, attacker_port = free_port(), free_port()
    if listed:
        settings["WALLABY_CORS_ORIGINS"] = f"http://localhost:{attacker_port}"
    gateway = _start_gateway(couch_backend, port, WALLABY_COOKIE_SAMESITE="None", **settings)
    node = _browser_script("cross_site_ws.mjs", port, member, str(attacker_port), page, outcome)
    try:
        result = node.stdout.readline().strip()
        assert result == "OK", result
        assert node.wait(30) == 0
        return _metrics(port)
    finally:
        _clean_up(node, gateway, couch_backend, member.db)


def _handshakes(metrics: dict[str, float], status: int) -> float:
    """Handshakes answered with ``status`` (101: accepted)."""
    return metrics.get(
        f'wallaby_http_requests_total{{route="mounted",method="GET",status="{status}"}}', 0.0)


def test_cross_site_page_cannot_open_a_socket_with_the_users_cookie(
    couch_backend: CouchBackend,
) -> None:
    """The other site's socket closes without opening (1006) and never sees the change
    written to the user's database; the gateway refused it for its origin (403). The one
    socket it accepted is the demo page's own."""
    metrics = _attack(couch_backend, "attacker", "refused")
    assert _handshakes(metrics, 403) == 1
    assert metrics['wallaby_errors_total{route="mounted",error="forbidden"}'] == 1
    assert metrics["wallaby_ws_rejected_handshakes_total"] == 1
    assert _handshakes(metrics, 101) == metrics["wallaby_ws_connections_accepted_total"] == 1


def test_cross_site_page_let_in_by_star_is_not_the_user(couch_backend: CouchBackend) -> None:
    """``WALLABY_CORS_ORIGINS=*`` (and anonymous callers allowed, so that a socket without
    credentials opens): the other site's socket opens, but as nobody: the cookie it carried
    does not count, its subscription to the user's database is refused as not
    authenticated (401) and it never sees the change."""
    metrics = _attack(couch_backend, "attacker", "unauth", WALLABY_CORS_ORIGINS="*",
                      WALLABY_ALLOW_ANONYMOUS="true")
    assert _handshakes(metrics, 101) == 2  # the demo page's and the other site's
    assert metrics["wallaby_ws_rejected_handshakes_total"] == 0


def test_cross_site_page_let_in_by_star_without_anonymous_is_refused(
    couch_backend: CouchBackend,
) -> None:
    """``WALLABY_CORS_ORIGINS=*``, anonymous callers not allowed: with its cookie not
    counting, the other site's handshake has no credentials and is refused (401, not the
    403 of a foreign origin)."""
    metrics = _attack(couch_backend, "attacker", "refused", WALLABY_CORS_ORIGINS="*")
    assert _handshakes(metrics, 401) == 1
    assert _handshakes(metrics, 403) == 0
    assert metrics["wallaby_ws_rejected_handshakes_total"] == 1
    assert _handshakes(metrics, 101) == 1


@pytest.mark.parametrize("page", ["own", "listed"])
def test_cross_site_controls_the_same_script_follows_the_database(
    couch_backend: CouchBackend, page: str,
) -> None:
    """Controls (the attack script can see a change when the gateway lets it): own: run on
    the gateway's own page, it subscribes with the cookie and gets the change; listed: the
    other site, named in ``WALLABY_CORS_ORIGINS``, does too, so Chromium sent the cookie
    with its cross-site handshake (what the other tests' gateway refused or ignored)."""
    metrics = _attack(couch_backend, "own" if page == "own" else "attacker", "live",
                      listed=page == "listed")
    assert _handshakes(metrics, 101) == 2
    assert metrics["wallaby_ws_rejected_handshakes_total"] == 0
