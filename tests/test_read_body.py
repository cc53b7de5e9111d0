"""``read_body``: how a small CouchDB answer's body ends, fails or is cancelled (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from gateway.couch.transport import read_body
from gateway.errors import CouchUnreachable


class _BodyTransport:
    def __init__(self) -> None:
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True


class _Response:
    """Just ``deliverBody``: the test plays the connection's part."""

    def __init__(self) -> None:
        self.protocol: Any = None
        self.transport = _BodyTransport()

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def _start(response: _Response) -> Deferred[bytes]:
    return Deferred.fromCoroutine(read_body(response))  # type: ignore[arg-type]


@pytest.mark.parametrize("end", [ResponseDone(), PotentialDataLoss()])
def test_a_complete_body_is_joined(end: Exception) -> None:
    response = _Response()
    result = _start(response)
    response.protocol.dataReceived(b'{"ok":')
    response.protocol.dataReceived(b"true}")
    assert not result.called
    response.protocol.connectionLost(Failure(end))
    assert result.result == b'{"ok":true}'


def test_a_lost_connection_is_couch_unreachable() -> None:
    response = _Response()
    result = _start(response)
    response.protocol.dataReceived(b'{"ok":')
    response.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    failure = result.result
    result.addErrback(lambda _: None)
    assert isinstance(failure, Failure) and failure.check(CouchUnreachable)
    assert "lost while reading" in str(failure.value)


def test_cancelling_stops_the_transfer_and_ignores_its_end() -> None:
    """A timeout cancels the read: the body stops, and its later end is not an error."""
    response = _Response()
    result = _start(response)
    response.protocol.dataReceived(b"partial")
    result.cancel()
    assert response.transport.stopped
    failure = result.result
    result.addErrback(lambda _: None)
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    # The stopped transfer then ends; nothing may fire twice (AlreadyCalledError).
    response.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
