"""A request whose client leaves before any answer was written is logged and counted as 499.

No status reached the client, so neither the access log nor
``wallaby_http_requests_total`` may show the 200 Twisted starts every request with (or
whatever the gateway wrote into the dead connection afterwards), as nginx logs 499.
Against the real server, with a fault proxy holding CouchDB's answer back.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web._newclient import ResponseNeverReceived

from tests.rest.conftest import Scenario, StartGateway
from tests.support.faultproxy import FaultProxy


async def test_a_read_left_before_its_answer_is_a_499_not_a_success(
    start_gateway: StartGateway, scenario: Scenario, proxy: FaultProxy, reactor: Any
) -> None:
    gateway = await start_gateway(couchdb_url=proxy.url, request_timeout=1.0)
    client = gateway.as_user(scenario.member)
    url = f"/api/v1/db/{scenario.db.name}/all_docs"
    assert (await client.get(url)).status == 200  # the user is checked, before the stall
    proxy.stall()
    opening: Deferred[Any] = Deferred.fromCoroutine(client.open("GET", url))
    await deferLater(reactor, 0.3, lambda: None)  # the gateway waits for CouchDB
    opening.cancel()  # the client leaves: its connection is closed
    with pytest.raises(ResponseNeverReceived):  # cancelled, as the client meant
        await opening
    deadline = time.monotonic() + 10
    metrics = ""
    while 'route="allDocs",method="GET",status="499"} 1' not in metrics:
        assert time.monotonic() < deadline, metrics
        await deferLater(reactor, 0.1, lambda: None)
        metrics = (await gateway.client.get("/metrics")).body.decode()
    assert 'route="allDocs",method="GET",status="200"} 1\n' in metrics  # the first read only
    assert 'route="allDocs",method="GET",status="504"' not in metrics  # nobody got one
    proxy.resume()
