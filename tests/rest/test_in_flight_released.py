"""Ended requests are not kept by InFlight or by request.handler."""

from __future__ import annotations

import gc
from typing import Any

from gateway.http.request import GatewayRequest
from tests.rest.conftest import RunningGateway


def _live_requests() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, GatewayRequest))


async def test_ended_requests_are_freed(gateway: RunningGateway, reactor: Any) -> None:
    for _ in range(5):
        await gateway.client.get("/health")
        await gateway.client.get("/api/v1/db/nope")
    before = _live_requests()
    for _ in range(200):
        await gateway.client.get("/health")
        await gateway.client.get("/api/v1/db/nope")
        await gateway.client.get("/api/v1/db/_users/docs/x")
    assert gateway.app.in_flight.count == 0 and gateway.app.in_flight.requests == []
    after = _live_requests()
    assert after - before < 10, (before, after)
    # without the cycle collector, by reference counting alone
    gc.disable()
    try:
        base = sum(1 for obj in gc.get_objects() if isinstance(obj, GatewayRequest))
        for _ in range(50):
            await gateway.client.get("/api/v1/db/nope")
        grown = sum(1 for obj in gc.get_objects() if isinstance(obj, GatewayRequest)) - base
    finally:
        gc.enable()
    print("requests kept alive only by cycles:", grown)
