"""gateway/http/client_address.py ClientAddress._trusted.

a0f1f73 made a proxy listed by its IPv4-mapped address (``::ffff:127.0.0.1``) trusted
when the peer shows in that form (a dual-stack listener). Its docstring says "an
operator may list it either way", but only the *address* is turned into its IPv4 form,
never the listed *network*: listed as ``::ffff:127.0.0.1`` (or a mapped range
``::ffff:10.0.0.0/104``), the same proxy is not trusted when the gateway listens on IPv4
(WALLABY_HOST=127.0.0.1 or 0.0.0.0, the peer is ``127.0.0.1``), nor when an
X-Forwarded-For hop is written in IPv4 form. ``::ffff:127.0.0.1`` *is* 127.0.0.1
(RFC 4291 2.5.5.2), and the operator gets no warning: every client behind the proxy
counts as one, so one attacker's failed logins lock every user behind it out.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, spawn_gateway
from tests.reliability.test_login_lockout_races import _login


def test_proxy_listed_by_its_ipv4_mapped_address_is_trusted_on_an_ipv4_listener(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    victim, password = couch.new_user()
    gateway = spawn_gateway(
        couch_backend.admin_url, tmp_path, WALLABY_HOST="127.0.0.1",
        WALLABY_TRUSTED_PROXIES="::ffff:127.0.0.1",
        WALLABY_LOGIN_MAX_FAILURES="5", WALLABY_LOGIN_LOCKOUT_SECONDS="300")
    try:
        attacker, user = "198.51.100.71", "203.0.113.72"
        guesses = [_login(gateway.port, victim, f"guess{i}", attacker) for i in range(6)]
        assert guesses == [401] * 5 + [429], guesses
        real = _login(gateway.port, victim, password, user)
        assert real == 200, (
            f"the real user at {user}, behind the proxy listed as ::ffff:127.0.0.1 (which "
            f"is 127.0.0.1), is refused {real} after {attacker}'s guesses: on an IPv4 "
            "listener the peer 127.0.0.1 is not matched against the mapped entry")
    finally:
        gateway.stop()
