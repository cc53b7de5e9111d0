"""Ways around the failed-login lockout found by the review of session 21's fixes."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, spawn_gateway


def _basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


def test_concurrent_guesses_are_not_all_let_through_before_the_first_failure(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    """README: after WALLABY_LOGIN_MAX_FAILURES (5) failures of one account from one
    client, further attempts get 429 without reaching CouchDB. The guard checks the
    count when an attempt starts and counts a failure when CouchDB has answered: guesses
    sent together (the default burst is 200) all pass the check before the first one
    has failed, so one client gets up to ~200 guesses per lockout window instead of 5."""
    victim, _password = couch.new_user()
    gateway = spawn_gateway(
        couch_backend.admin_url, tmp_path, WALLABY_TRUSTED_PROXIES="127.0.0.1/32",
        WALLABY_RATE_LIMIT_PER_SECOND="50", WALLABY_RATE_LIMIT_BURST="200",
        WALLABY_LOGIN_MAX_FAILURES="5", WALLABY_LOGIN_LOCKOUT_SECONDS="300")
    try:
        attacker = "198.51.100.21"
        n = 60
        # Open every connection and send every request head first, then read: the
        # guesses are in flight together, as an attacker's would be.
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
            socks.append(s)
        for i, s in enumerate(socks):
            s.sendall((
                "GET /api/v1/session HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {_basic(victim, f'concurrent-guess-{i}')}\r\n"
                f"X-Forwarded-For: {attacker}\r\nConnection: close\r\n\r\n").encode())
        statuses = []
        for s in socks:
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            statuses.append(int(data.split(b" ", 2)[1]))
            s.close()
        reached = statuses.count(401)
        assert reached <= 5, (
            f"{reached} of {n} concurrent wrong guesses of {victim} from one client reached "
            f"CouchDB (401); {statuses.count(429)} refused (429): the lockout lets at most 5")
    finally:
        gateway.stop()


def _login(port: int, name: str, password: str, client: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/v1/session",
                     body=json.dumps({"name": name, "password": password}),
                     headers={"Content-Type": "application/json", "X-Forwarded-For": client})
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def test_trusted_proxy_named_by_its_ipv4_mapped_address_is_still_trusted(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    """A gateway listening on '::' (dual stack) sees an IPv4 proxy as ::ffff:a.b.c.d,
    and that is the address its access log shows, so an operator lists the proxy as
    ``WALLABY_TRUSTED_PROXIES=::ffff:127.0.0.1``. Until today's commit 718dfdf that
    worked; ClientAddress._trusted now turns the peer into IPv4 before comparing it with
    the (IPv6) network, so the proxy is no longer trusted: every client behind it is the
    proxy, and one attacker's failed logins lock every user behind the proxy out
    (README, WALLABY_TRUSTED_PROXIES: the client is the last untrusted X-Forwarded-For)."""
    victim, password = couch.new_user()
    gateway = spawn_gateway(
        couch_backend.admin_url, tmp_path, WALLABY_HOST="::",
        WALLABY_TRUSTED_PROXIES="::ffff:127.0.0.1",
        WALLABY_LOGIN_MAX_FAILURES="5", WALLABY_LOGIN_LOCKOUT_SECONDS="300")
    try:
        attacker, user = "198.51.100.31", "203.0.113.32"
        guesses = [_login(gateway.port, victim, f"guess{i}", attacker) for i in range(6)]
        assert guesses == [401] * 5 + [429], guesses
        real = _login(gateway.port, victim, password, user)
        assert real == 200, (
            f"the real user at {user} (another client behind the trusted proxy "
            f"::ffff:127.0.0.1) is refused {real} after {attacker}'s failed guesses: the "
            f"proxy is no longer trusted, so all its clients count as one")
    finally:
        gateway.stop()


def test_locked_out_handshake_and_rest_say_when_to_retry(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    """Sanity (passes): a lockout's 429, on REST and on a WebSocket handshake with Basic
    credentials in any spelling, carries an integer Retry-After within the window."""
    import uuid
    victim, password = couch.new_user()
    gateway = spawn_gateway(
        couch_backend.admin_url, tmp_path, WALLABY_TRUSTED_PROXIES="127.0.0.1/32",
        WALLABY_LOGIN_MAX_FAILURES="5", WALLABY_LOGIN_LOCKOUT_SECONDS="300")
    try:
        client = "198.51.100.41"
        assert [_login(gateway.port, victim, f"g{i}", client) for i in range(5)] == [401] * 5
        token = base64.b64encode(f"{victim}:{password}".encode()).decode()
        for auth in (f"Basic {token}", f"basic {token}", f"BASIC   {token.rstrip('=')}  "):
            for upgrade in (False, True):
                conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
                headers = {"Authorization": auth, "X-Forwarded-For": client}
                if upgrade:
                    headers.update({"Upgrade": "websocket", "Connection": "Upgrade",
                                    "Sec-WebSocket-Version": "13",
                                    "Sec-WebSocket-Key": base64.b64encode(uuid.uuid4().bytes).decode()})
                conn.request("GET", "/api/v1/changes" if upgrade else "/api/v1/session",
                             headers=headers)
                answer = conn.getresponse()
                answer.read()
                conn.close()
                retry = answer.getheader("Retry-After")
                assert answer.status == 429, (auth, upgrade, answer.status)
                assert retry is not None and retry.isdigit() and 1 <= int(retry) <= 300, retry
    finally:
        gateway.stop()
