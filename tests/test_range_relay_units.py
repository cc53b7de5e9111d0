"""A byte range relayed from a whole upstream body ends with the range."""

from __future__ import annotations

from gateway.http.streaming import relay
from tests.test_spill import FakeConsumer, FakeResponse


class _Request(FakeConsumer):
    startedWriting = False  # noqa: N815 - Twisted's attribute name
    chunked = False


def test_a_range_completes_and_stops_the_upstream_as_soon_as_its_last_byte_is_sent() -> None:
    response, request = FakeResponse(), _Request()
    done = relay(response, request, skip=2, limit=4)  # bytes 2-5 of a larger body
    response.send(b"012")
    response.send(b"345")  # the range's last byte: done, the rest is not read
    assert done.called and done.result == 4
    assert b"".join(request.chunks) == b"2345"
    assert response.transport.stopped and request.unregistered
