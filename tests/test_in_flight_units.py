"""The in-flight request table the graceful shutdown waits on (``InFlight``)."""

from __future__ import annotations

from gateway.http.site import InFlight


def test_waiters_fire_when_the_last_request_ends_and_not_before() -> None:
    in_flight = InFlight()
    first, second = object(), object()
    in_flight.begin(first)
    in_flight.begin(second)
    waited = in_flight.wait_idle()
    fired: list[object] = []
    waited.addCallback(fired.append)
    in_flight.end(first)
    in_flight.end(first)  # ended twice: still one request in flight
    assert in_flight.count == 1 and in_flight.requests == [second] and fired == []
    in_flight.end(second)
    assert in_flight.count == 0 and fired == [None]
    assert in_flight.wait_idle().called


def test_the_count_is_the_table() -> None:
    in_flight = InFlight()
    requests = [object() for _ in range(3)]
    for request in requests:
        in_flight.begin(request)
    assert in_flight.count == 3 and in_flight.requests == requests
    in_flight.end(requests[1])
    assert in_flight.count == 2 and in_flight.requests == [requests[0], requests[2]]
