"""The demo page (``/``) in a real headless Chromium against a real
gateway process and the suite's pouchdb-server, as a user and as an attacker sees it.

Each test drives one case of ``tests/browser/demo_page_robustness.mjs``; cases that need the
gateway down ask for it over stdio (``DOWN?`` / ``UP?``). Screenshots of the failures go
to ``$DEMO_SHOTS`` (default ``/tmp``)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from gateway.embedded import free_port
from tests.browser.test_demo import (
    CHROMIUM,
    ROOT,
    _call,
    _member_of_new_database,
    _start_gateway,
    _stop,
)
from tests.conftest import CouchBackend

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed"),
]


def _run(couch_backend: CouchBackend, case: str, *args: str, prepare: Any = None) -> None:
    member = _member_of_new_database(couch_backend)
    if prepare is not None:
        prepare(member)
    port = free_port()
    gateway = _start_gateway(couch_backend, port)
    node = subprocess.Popen(  # fixed argv
        ["node", str(ROOT / "tests/browser/demo_page_robustness.mjs"), f"http://127.0.0.1:{port}",
         member.db, member.name, member.password, case, *args],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    try:
        while True:
            line = node.stdout.readline().strip()
            if line == "DOWN?":
                _stop(gateway)
            elif line == "UP?":
                gateway = _start_gateway(couch_backend, port)
            else:
                break
            node.stdin.write(line[:-1] + "\n")
            node.stdin.flush()
        assert line == "OK", line
        assert node.wait(30) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        _stop(gateway)
        _call(couch_backend, "DELETE", f"/{member.db}")


def test_demo_login_form_hidden_once_signed_in(couch_backend: CouchBackend) -> None:
    """Signed in, the login form is neither shown nor in the accessibility tree (a
    `form {display: flex}` rule used to beat the user agent's `[hidden]`)."""
    _run(couch_backend, "login_form_hidden")


def test_demo_page_cannot_be_framed_by_another_origin(couch_backend: CouchBackend) -> None:
    """Another origin of the same site cannot frame the signed-in page (clickjacking of
    its delete buttons): `/` sends `frame-ancestors 'self'` and `X-Frame-Options`."""
    _run(couch_backend, "framed")


def test_demo_status_is_a_live_region(couch_backend: CouchBackend) -> None:
    """The connection status is a live region, its changes status messages (WCAG 4.1.3)."""
    _run(couch_backend, "status_live_region")


def test_demo_done_items_have_enough_contrast(couch_backend: CouchBackend) -> None:
    """A done item's text has at least 4.5:1 contrast (WCAG 1.4.3; it was 3.15:1)."""
    _run(couch_backend, "done_contrast")
