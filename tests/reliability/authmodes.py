"""A gateway process in one ``WALLABY_AUTH_MODE``, in front of the CouchDB auth stand-in
(``tests/support/couch_auth_standin.py``), and a user's login through it."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import threads

from tests.reliability.conftest import GatewayProcess, http, spawn_gateway

#: The stand-in's proxy secret (``[chttpd_auth] secret``), given to proxy-mode gateways.
SECRET = "proxy-secret"

#: Sockets re-checked every second, no pings, feed heartbeats every 0.5 s.
RECHECK_EVERY_SECOND = {"WALLABY_WS_AUTH_RECHECK": "1", "WALLABY_WS_PING_INTERVAL": "0",
                        "WALLABY_FEED_HEARTBEAT_MS": "500"}


def spawn_in_mode(couch_url: str, tmp_path: Path, gateways: list[GatewayProcess], mode: str,
                  **env: str) -> GatewayProcess:
    """Start a gateway in ``mode`` (with :data:`SECRET` in proxy mode), stopped after the test."""
    settings = {"WALLABY_AUTH_MODE": mode, **env}
    if mode == "proxy":
        settings["WALLABY_PROXY_SECRET"] = SECRET
    gateway = spawn_gateway(couch_url, tmp_path, **settings)
    gateways.append(gateway)
    return gateway


async def bearer_of_login(gateway: GatewayProcess, name: str, password: str) -> dict[str, str]:
    """Log in through the gateway; the ``Authorization`` header of its session token."""
    login = await threads.deferToThread(http, "POST", gateway.url + "/api/v1/session",
                                        {"name": name, "password": password})
    assert login.status == 200, login.body
    return {"Authorization": f"Bearer {login.json['token']}"}
