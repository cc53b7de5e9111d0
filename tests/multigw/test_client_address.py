"""Client addresses behind the shipped HAProxy config (``option forwardfor``).

HAProxy connects to the gateways from 127.0.0.2 (``source``), so that address alone is
the proxy; clients connect to HAProxy from 127.0.0.5, 127.0.0.6, … (every 127/8 address
is local on Linux). docs/deployment.md, "Client addresses behind a proxy": with
``WALLABY_TRUSTED_PROXIES`` set to the proxy, rate limits and the failed-login lockout
count per real client; without it, every client shares the proxy's address.
"""

from __future__ import annotations

import json
from typing import Any

from tests.multigw.stack import compose_value, request

PROXY = "127.0.0.2"
ALICE = "127.0.0.5"
MALLORY = "127.0.0.6"


def _access_clients(gateway: Any) -> list[tuple[str, str]]:
    lines = []
    for line in gateway.output().splitlines():
        if '"type": "access"' in line:
            entry = json.loads(line)
            lines.append((entry.get("route"), entry.get("client")))
    return lines


def _login(port: int, name: str, password: str, source: str, **headers: str) -> int:
    return request(port, "POST", "/api/v1/session", body={"name": name, "password": password},
                   source=source, headers=headers).status


def test_forged_x_forwarded_for_neither_escapes_nor_impersonates(lab: Any) -> None:
    """One gateway, trusted proxy set as the docs say; a client forging the header."""
    name, password = lab.user()
    gateway = lab.gateway("a", WALLABY_TRUSTED_PROXIES=f"{PROXY}/32",
                          WALLABY_RATE_LIMIT_PER_SECOND="0.01", WALLABY_RATE_LIMIT_BURST="6",
                          WALLABY_LOGIN_MAX_FAILURES="3")
    proxy = lab.haproxy(gateway, source=PROXY)

    # Login lockout: a fresh forged address on every attempt does not reset the count.
    statuses = [_login(proxy.port, name, "wrong", MALLORY, **{"X-Forwarded-For": f"10.9.0.{i}"})
                for i in range(4)]
    assert statuses == [401, 401, 401, 429], statuses
    # Nor does the RFC 7239 header, or a forged address of another client (Alice's).
    assert _login(proxy.port, name, "wrong", MALLORY, Forwarded=f"for={ALICE}") == 429
    assert _login(proxy.port, name, "wrong", MALLORY, **{"X-Forwarded-For": ALICE}) == 429
    # Mallory's forged failures were not counted against Alice: she logs in.
    assert _login(proxy.port, name, password, ALICE) == 200

    # Rate limit: Mallory has used 6 tokens of 6; forging does not give her more ...
    forged = [request(proxy.port, "GET", "/api/v1/session", source=MALLORY,
                      headers={"X-Forwarded-For": f"10.8.0.{i}, 10.7.0.{i}"}).status
              for i in range(3)]
    assert forged == [429, 429, 429], forged
    # ... and posing as Alice does not spend Alice's.
    assert request(proxy.port, "GET", "/api/v1/session", source=MALLORY,
                   headers={"X-Forwarded-For": ALICE}).status == 429
    assert request(proxy.port, "GET", "/api/v1/session", source=ALICE).status == 401

    clients = {client for route, client in _access_clients(gateway) if route in ("login", "getSession")}
    assert clients == {ALICE, MALLORY}, clients


def test_without_trusted_proxies_every_client_shares_the_proxy_address(lab: Any) -> None:
    """What the docs warn of: one bucket and one lockout for everyone behind the proxy."""
    name, password = lab.user()
    gateway = lab.gateway("a", WALLABY_LOGIN_MAX_FAILURES="3")
    proxy = lab.haproxy(gateway, source=PROXY)
    for _ in range(3):
        assert _login(proxy.port, name, "wrong", MALLORY) == 401
    assert _login(proxy.port, name, password, ALICE) == 429  # locked out for everyone
    clients = {client for _, client in _access_clients(gateway)}
    assert clients == {PROXY}, clients


def test_a_trusted_proxy_address_is_trusted_only_when_it_is_the_peer(lab: Any) -> None:
    """A client that reaches the gateway directly and names the proxy gains nothing."""
    name, _ = lab.user()
    gateway = lab.gateway("a", WALLABY_TRUSTED_PROXIES=f"{PROXY}/32", WALLABY_LOGIN_MAX_FAILURES="2")
    for i in range(2):
        assert _login(gateway.port, name, "wrong", MALLORY,
                      **{"X-Forwarded-For": f"10.1.1.{i}, {PROXY}"}) == 401
    assert _login(gateway.port, name, "wrong", MALLORY, **{"X-Forwarded-For": "10.1.1.9"}) == 429


def test_the_cluster_profile_trusts_only_its_load_balancer() -> None:
    """The cluster profile trusted every private range (10/8, 172.16/12, 192.168/16): the
    proxy, but also the clients HAProxy sees there (a LAN client; Docker's bridge
    gateway, which clients of the published ``lb`` come from through docker-proxy).
    HAProxy appends that trusted address, so the gateway skipped it and took what the
    client wrote into X-Forwarded-For, escaping the rate limit and the lockout (end to
    end on loopback: 6 of 6 bad passwords answered 401 with a lockout of 3).

    On the gateway's own address logic, with the shipped value: whatever a client behind
    ``lb`` (its fixed address) writes into the header, it stays the address HAProxy saw."""
    from twisted.internet.address import IPv4Address
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.http.client_address import ClientAddress

    trusted = compose_value("WALLABY_TRUSTED_PROXIES")
    lb = compose_value("ipv4_address")
    assert trusted == f"{lb}/32"
    finder = ClientAddress(tuple(trusted.split(",")))
    for seen_by_lb in ("192.168.1.20", "10.213.7.1", "172.17.0.1"):
        request_ = DummyRequest([b""])
        request_.client = IPv4Address("TCP", lb, 40000)
        request_.requestHeaders.addRawHeader(b"X-Forwarded-For", b"203.0.113.66")  # forged
        request_.requestHeaders.addRawHeader(b"X-Forwarded-For", seen_by_lb.encode())
        assert finder.of(request_) == seen_by_lb
