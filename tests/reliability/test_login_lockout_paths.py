"""The failed-login lockout and the rate limit: every way in, keyed by client address.

A lockout is a (client, account) pair with ``WALLABY_LOGIN_MAX_FAILURES`` recent failures;
README: "Failed logins ... of one account from one client address before further attempts
of that pair get 429 without reaching CouchDB", "How long a failed login counts" (300 s).
Each test here is a way around it (or around the rate limit) that the gateway closed:

* Basic credentials on a WebSocket handshake are a login like any other;
* Basic credentials without their base64 ``=`` padding name the same account;
* a flood of failed logins of made-up names does not push a lockout out;
* an IPv6 client rotating addresses within its /64 is one client (RFC 4291 2.5.1,
  RFC 8981 temporary addresses: one host may use any of 2^64 addresses).

Clients are told apart by ``X-Forwarded-For`` through a trusted proxy (127.0.0.1 here),
as in the documented deployment behind a load balancer (docs/deployment.md).
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, GatewayProcess, spawn_gateway


def _gateway(couch_backend: CouchBackend, logdir: Path, **env: str) -> GatewayProcess:
    return spawn_gateway(
        couch_backend.admin_url, logdir, WALLABY_TRUSTED_PROXIES="127.0.0.1/32",
        WALLABY_RATE_LIMIT_PER_SECOND="50", WALLABY_RATE_LIMIT_BURST="200",
        WALLABY_LOGIN_MAX_FAILURES="5", WALLABY_LOGIN_LOCKOUT_SECONDS="300",
        **env)


def _call(conn: http.client.HTTPConnection, method: str, path: str, client: str,
          body: object = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    headers = {"X-Forwarded-For": client}
    if data is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    answer = conn.getresponse()
    answer.read()
    return answer.status


def _login(port: int, name: str, password: str, client: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return _call(conn, "POST", "/api/v1/session", client,
                     {"name": name, "password": password})
    finally:
        conn.close()


def _ws_handshake(port: int, authorization: str, client: str) -> int:
    """The status of a WebSocket handshake on /api/v1/changes (101: accepted)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/api/v1/changes", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(uuid.uuid4().bytes).decode(),
            "Authorization": authorization, "X-Forwarded-For": client,
        })
        return conn.getresponse().status
    finally:
        conn.close()


def _flood_failed_logins(port: int, clients: list[str], per_client: int,
                         deadline: float) -> dict[int, int]:
    """``per_client`` failed logins of made-up names from each client (keep-alive)."""

    def one_client(client: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    break
                status = _call(conn, "POST", "/api/v1/session", client,
                               {"name": f"junk_{uuid.uuid4().hex[:10]}", "password": "x"})
                counts[status] = counts.get(status, 0) + 1
        finally:
            conn.close()
        return counts

    total: dict[int, int] = {}
    with ThreadPoolExecutor(8) as pool:
        for counts in pool.map(one_client, clients):
            for status, n in counts.items():
                total[status] = total.get(status, 0) + n
    return total


def test_lockout_holds_for_websocket_handshakes_with_basic_credentials(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    """Basic credentials on the WebSocket handshake are a login like any other: the
    lockout must refuse them (429, CouchDB not asked) and count their failures."""
    victim, password = couch.new_user()
    gateway = _gateway(couch_backend, tmp_path)
    try:
        attacker = "198.51.100.9"
        statuses = [_login(gateway.port, victim, f"guess{i}", attacker) for i in range(6)]
        assert statuses == [401] * 5 + [429], statuses  # locked out on the REST API

        def basic(secret: str) -> str:
            return "Basic " + base64.b64encode(f"{victim}:{secret}".encode()).decode()

        # Still locked out: 20 more guesses, then the right password, by handshake.
        guesses = [_ws_handshake(gateway.port, basic(f"ws-guess{i}"), attacker)
                   for i in range(20)]
        right = _ws_handshake(gateway.port, basic(password), attacker)
        assert set(guesses) == {429} and right == 429, (
            f"locked-out client guessed by WebSocket handshake: {guesses.count(401)} of 20 "
            f"wrong guesses answered 401 by CouchDB, the right password {right}")
    finally:
        gateway.stop()


def test_failed_websocket_handshakes_count_toward_the_lockout(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    victim, _password = couch.new_user()
    gateway = _gateway(couch_backend, tmp_path)
    try:
        client = "198.51.100.10"
        token = base64.b64encode(f"{victim}:wrong".encode()).decode()
        guesses = [_ws_handshake(gateway.port, f"Basic {token}", client) for i in range(10)]
        after = _login(gateway.port, victim, "wrong-again", client)
        assert 429 in guesses or after == 429, (
            f"10 failed Basic handshakes for {victim} ({guesses}) did not count: the next "
            f"login from the same client is {after}")
    finally:
        gateway.stop()


def test_lockout_holds_for_basic_credentials_without_base64_padding(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    """Base64 without its ``=`` padding names the same account: the gateway once read
    no name from it (so no lockout check and no failure counted) while the credential
    still went to CouchDB, which decodes it (pouchdb-server does)."""
    victim, password = couch.new_user()
    gateway = _gateway(couch_backend, tmp_path)
    try:
        client = "198.51.100.11"
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)

        def session(secret: str, *, pad: bool) -> int:
            token = base64.b64encode(f"{victim}:{secret}".encode()).decode()
            conn.request("GET", "/api/v1/session", headers={
                "Authorization": "Basic " + (token if pad else token.rstrip("=")),
                "X-Forwarded-For": client})
            answer = conn.getresponse()
            answer.read()
            return answer.status

        try:
            locked = [session(f"g{i}", pad=True) for i in range(6)]
            assert locked == [401] * 5 + [429], locked
            # Passwords whose "name:password" is not a multiple of 3 bytes long need padding.
            guesses = [f"unpadded-guess{i:02d}" for i in range(20)]
            guesses = [g if len(f"{victim}:{g}") % 3 else g + "x" for g in guesses]
            assert len(f"{victim}:{password}") % 3  # its token has padding too
            secrets = [*guesses, password]
            unpadded = [session(s, pad=False) for s in secrets]
        finally:
            conn.close()
        assert set(unpadded) == {429}, (
            f"locked-out client guessing with unpadded Basic credentials: "
            f"{unpadded.count(401)} wrong guesses reached CouchDB (401), the right password "
            f"{'was accepted (200)' if unpadded[-1] == 200 else unpadded[-1]}")
    finally:
        gateway.stop()


def test_lockout_survives_a_flood_of_other_failed_logins(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    """A locked (client, account) pair must stay locked for the lockout period,
    whatever other clients (or the same one) fail meanwhile."""
    victim, _password = couch.new_user()
    gateway = _gateway(couch_backend, tmp_path)
    try:
        attacker = "198.51.100.7"
        statuses = [_login(gateway.port, victim, f"guess{i}", attacker) for i in range(6)]
        assert statuses == [401] * 5 + [429], statuses  # locked out, as documented

        # 10,200 failed logins of made-up names from 60 other addresses (each within
        # the default burst of 200, so no 429 from the rate limit): under a minute.
        started = time.monotonic()
        flood = _flood_failed_logins(gateway.port, [f"203.0.113.{i}" for i in range(1, 61)],
                                     per_client=170, deadline=started + 240)
        took = time.monotonic() - started
        assert flood.get(401, 0) >= 10_001, (flood, took)

        # Well within the 300 s lockout: the attacker's next guess must still be refused.
        after = _login(gateway.port, victim, "guess6", attacker)
        assert after == 429, (
            f"lockout of ({attacker}, {victim}) forgotten after {flood.get(401)} failed "
            f"logins of other names in {took:.0f} s: the next guess reached CouchDB ({after})")
    finally:
        gateway.stop()


def test_ipv6_client_rotating_addresses_in_its_64_is_still_limited(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    """One IPv6 host (a /64 of its own) must not get a fresh lockout and a fresh
    rate-limit bucket per address it picks."""
    victim, _password = couch.new_user()
    gateway = _gateway(couch_backend, tmp_path)
    try:
        prefix = "2001:db8:4a1:7::"
        # Password guessing: one guess per address, all from the same /64.
        guesses = [_login(gateway.port, victim, f"guess{i}", f"{prefix}{i + 1:x}")
                   for i in range(8)]
        # Rate limit: 400 quick requests (burst 200, 50/s), one address each.
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        try:
            rate = [_call(conn, "GET", "/api/v1/session", f"{prefix}1:{i + 1:x}")
                    for i in range(400)]
        finally:
            conn.close()
        limited = rate.count(429)
        assert guesses.count(429) >= 3 and limited >= 100, (
            f"one /64: guesses {guesses} (none refused: each address has its own lockout); "
            f"{limited} of 400 requests rate limited (each address its own bucket)")
    finally:
        gateway.stop()
