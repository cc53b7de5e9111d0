"""The handshake's own cost: Autobahn's per-connection set-up without its debug printing."""

from __future__ import annotations

from typing import Any

from gateway.ws.server import ChangesServerProtocol
from tests.ws.conftest import WsServer, record_first_arguments, ws_settings


async def test_a_handshake_takes_the_factorys_options_without_printing_them(
    make_server: Any, make_user: Any, monkeypatch: Any
) -> None:
    """Autobahn pretty-printed 40 options for a debug line at every connection, logged or
    not (a third of a handshake's CPU); the connection copies them without that."""
    from autobahn.websocket import protocol as autobahn_protocol

    printed = record_first_arguments(monkeypatch, autobahn_protocol, "pformat")
    server: WsServer = await make_server(ws_settings(ws_ping_interval=7.0,
                                                     ws_max_message_bytes=4096))
    client = await server.connect(await server.login(await make_user()))
    (connection,) = server.service.factory.connections
    # (the test's own client is an Autobahn client too: its options name its classes)
    server_side = [value for value in printed if isinstance(value, list) and any(
        str(entry[2]).startswith("ChangesServer") for entry in value)]
    assert server_side == [], server_side
    factory = server.service.factory
    for name in ChangesServerProtocol._OPTIONS:
        assert getattr(connection, name) == getattr(factory, name), name
    assert connection.autoPingInterval == 7.0 and connection.maxMessagePayloadSize == 4096
    client.send(b'{"type": "ping", "pad": "' + b"x" * 5000 + b'"}')
    closed = await client.protocol.closed
    assert closed[1] == 1009, closed  # the factory's message limit is in force
