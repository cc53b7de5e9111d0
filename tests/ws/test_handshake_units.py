"""The Origin and credential rules of a WebSocket handshake (``gateway.ws.handshake``).

docs/websocket.md / the module's docstrings: no Origin, the gateway's own origin (same
host and port) or one listed in ``cors_origins`` may carry the browser's credentials; an
origin let in only by ``*`` must bring its own (``?token=``); anonymous callers are
refused unless ``allow_anonymous``; every handshake refused for the client's fault counts
in ``rejected_handshakes``. RFC 6454 / RFC 3986 3.2.2: a host compares case-insensitively.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway.errors import AccessDenied, AuthenticationRequired
from gateway.ws.handshake import Authenticate, admit, origin_allowed, origin_trusted
from gateway.ws.metrics import WsMetrics
from tests.ws.conftest import ws_settings


def _request(headers: dict[str, str]) -> Any:
    """A stand-in for Autobahn's ``ConnectionRequest``."""
    return SimpleNamespace(headers=headers, params={})


def _authenticate_as(name: str | None) -> Authenticate:
    async def authenticate(headers: Any, cookies: Any, client: str) -> Any:
        return SimpleNamespace(name=name, roles=())
    return authenticate


def test_a_listed_origin_matches_with_or_without_a_trailing_slash() -> None:
    assert origin_trusted("http://app.example", "gw", ("http://app.example/",))
    assert origin_trusted("http://app.example/", "gw", ("http://app.example",))


def test_the_gateway_s_own_origin_matches_its_host_case_insensitively() -> None:
    assert origin_trusted("http://gw.example:8080", "GW.Example:8080", ())
    assert origin_allowed("http://GW.example:8080", "gw.example:8080", ())
    assert not origin_trusted("http://gw.example:8081", "gw.example:8080", ())


def test_an_opaque_null_origin_is_never_the_gateway_s_own() -> None:
    """``Origin: null`` (a sandboxed page, a file: URL) is no one's own origin, even where
    the Host is empty (its netloc and the Host compare equal as empty strings)."""
    assert not origin_trusted("null", "", ())
    assert not origin_trusted("null", "gw", ())


async def test_an_anonymous_handshake_is_refused_unless_anonymous_callers_are_allowed() -> None:
    metrics = WsMetrics()
    with pytest.raises(AuthenticationRequired):
        await admit(_request({}), settings=ws_settings(), authenticate=_authenticate_as(None),
                    metrics=metrics, accepting=True)
    assert metrics.rejected_handshakes == 1
    identity, _key = await admit(_request({}), settings=ws_settings(allow_anonymous=True),
                                 authenticate=_authenticate_as(None), metrics=metrics,
                                 accepting=True)
    assert identity.name is None


async def test_a_foreign_origin_is_refused_and_counted() -> None:
    metrics = WsMetrics()
    with pytest.raises(AccessDenied):
        await admit(_request({"Origin": "http://evil.example", "Host": "gw"}),
                    settings=ws_settings(cors_origins=("http://app.example",)),
                    authenticate=_authenticate_as("alice"), metrics=metrics, accepting=True)
    assert metrics.rejected_handshakes == 1
