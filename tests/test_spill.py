"""Answers read whole up to a size and streamed past it (gateway.couch.spill), in memory."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone

from gateway.couch.spill import SpilledBody, read_or_spill
from gateway.errors import ClientStalled, CouchTimeout, CouchUnreachable


class FakeBodyTransport:
    """A response body's transport: records pausing and stopping."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeResponse:
    """An ``IResponse`` whose body the test delivers chunk by chunk."""

    def __init__(self) -> None:
        self.transport = FakeBodyTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        assert not self.transport.paused and not self.transport.stopped, "read while held"
        self.protocol.dataReceived(data)

    def end(self, reason: BaseException | None = None) -> None:
        self.protocol.connectionLost(Failure(reason or ResponseDone()))


class FakeConsumer:
    """A request as a consumer: collects writes, holds the registered producer."""

    def __init__(self) -> None:
        self.channel = object()  # a request whose client is still connected
        self.chunks: list[bytes] = []
        self.producer: Any = None
        self.unregistered = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered = True

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


def _started(limit: int) -> tuple[FakeResponse, Deferred[bytes | SpilledBody]]:
    response = FakeResponse()
    outcome = Deferred.fromCoroutine(read_or_spill(response, limit))  # type: ignore[arg-type]
    return response, outcome


def _spilled(limit: int = 10) -> tuple[FakeResponse, SpilledBody]:
    response, outcome = _started(limit)
    response.send(b"a" * 8)
    response.send(b"b" * 8)  # past the limit
    assert outcome.called
    spilled = outcome.result
    assert isinstance(spilled, SpilledBody)
    return response, spilled


def test_a_body_within_the_limit_is_read_whole() -> None:
    response, outcome = _started(10)
    response.send(b"12345")
    response.send(b"67890")  # exactly the limit: still held
    assert not outcome.called and not response.transport.paused
    response.end()
    assert outcome.result == b"1234567890"


def test_a_body_that_breaks_off_before_the_limit_fails() -> None:
    response, outcome = _started(10)
    response.send(b"123")
    response.end(ConnectionLost())
    failure = outcome.result
    assert isinstance(failure, Failure) and failure.check(ConnectionLost)
    outcome.addErrback(lambda _: None)


def test_past_the_limit_the_upstream_is_paused_and_the_rest_left_unread() -> None:
    response, spilled = _spilled()
    assert response.transport.paused and not response.transport.stopped
    assert spilled.head_size == 16


def test_relay_writes_what_was_read_then_the_rest_with_backpressure() -> None:
    response, spilled = _spilled()
    consumer = FakeConsumer()
    clock = Clock()
    done = Deferred.fromCoroutine(spilled.relay(consumer.write, consumer, clock=clock, timeout=5))
    assert consumer.chunks == [b"a" * 8 + b"b" * 8]
    assert not response.transport.paused and consumer.producer is not None
    response.send(b"c" * 4)
    assert consumer.chunks[-1] == b"cccc"

    consumer.producer.pauseProducing()  # the client is slow
    assert response.transport.paused
    clock.advance(60)  # waiting for the client is not CouchDB's silence
    assert not done.called
    consumer.producer.resumeProducing()
    response.send(b"d")
    response.end()
    assert done.result == 21 and consumer.unregistered
    assert b"".join(consumer.chunks) == b"a" * 8 + b"b" * 8 + b"cccc" + b"d"


def test_relay_times_out_when_couchdb_goes_silent() -> None:
    response, spilled = _spilled()
    consumer = FakeConsumer()
    clock = Clock()
    done = Deferred.fromCoroutine(spilled.relay(consumer.write, consumer, clock=clock, timeout=5))
    clock.advance(4)
    response.send(b"more")
    clock.advance(4)  # 4 s since the last chunk: not yet
    assert not done.called
    clock.advance(1.5)
    failure = done.result
    assert isinstance(failure, Failure) and failure.check(CouchTimeout)
    assert "sent nothing for 5 s" in str(failure.value)
    assert response.transport.stopped  # the connection is dropped, not pooled half read
    done.addErrback(lambda _: None)


def test_a_body_that_breaks_off_while_relayed_fails_the_relay() -> None:
    response, spilled = _spilled()
    consumer = FakeConsumer()
    done = Deferred.fromCoroutine(spilled.relay(consumer.write, consumer))
    response.send(b"more")
    response.end(ConnectionLost())
    failure = done.result
    assert isinstance(failure, Failure) and failure.check(CouchUnreachable)
    assert consumer.unregistered
    done.addErrback(lambda _: None)


def test_a_body_that_ended_before_the_relay_started() -> None:
    response, spilled = _spilled()
    response.protocol.dataReceived(b"tail")  # the same socket read, after the pause
    response.end()
    consumer = FakeConsumer()
    done = Deferred.fromCoroutine(spilled.relay(consumer.write, consumer))
    assert done.result == 20 and consumer.chunks == [b"a" * 8 + b"b" * 8 + b"tail"]
    assert consumer.producer is None  # nothing left to pause

    response, spilled = _spilled()
    response.end(ConnectionLost())
    consumer = FakeConsumer()
    broken = Deferred.fromCoroutine(spilled.relay(consumer.write, consumer))
    failure = broken.result
    assert isinstance(failure, Failure) and failure.check(CouchUnreachable)
    broken.addErrback(lambda _: None)


def test_cancelling_the_relay_or_aborting_drops_the_connection() -> None:
    response, spilled = _spilled()
    consumer = FakeConsumer()
    done = Deferred.fromCoroutine(spilled.relay(consumer.write, consumer))
    done.cancel()  # the client went away
    assert response.transport.stopped
    done.addErrback(lambda _: None)

    response, spilled = _spilled()
    spilled.abort()  # the caller could not answer
    assert response.transport.stopped


def test_a_write_that_fails_stops_the_transfer() -> None:
    response, spilled = _spilled()

    def write(data: bytes) -> None:
        if data == b"boom":
            raise OSError("disk full")

    consumer = FakeConsumer()
    done = Deferred.fromCoroutine(spilled.relay(write, consumer))
    response.send(b"boom")
    failure = done.result
    assert isinstance(failure, Failure) and failure.check(OSError)
    assert response.transport.stopped
    done.addErrback(lambda _: None)


@pytest.mark.parametrize("limit", [0, 1])
def test_tiny_limits(limit: int) -> None:
    response, outcome = _started(limit)
    response.send(b"xy")
    assert isinstance(outcome.result, SpilledBody)


def test_a_first_write_that_fails_stops_the_transfer_and_lets_the_consumer_go() -> None:
    response, spilled = _spilled()
    consumer = FakeConsumer()

    def write(data: bytes) -> None:
        raise RuntimeError("the request is already finished")

    done = Deferred.fromCoroutine(spilled.relay(write, consumer))
    failure = done.result
    assert isinstance(failure, Failure) and failure.check(RuntimeError)
    assert response.transport.stopped and consumer.unregistered and consumer.producer is None
    response.protocol.dataReceived(b"late")  # what the stopped transport still had: dropped
    response.end(ConnectionLost())  # and its end concerns nobody any more
    done.addErrback(lambda _: None)


def test_a_consumer_that_holds_the_transfer_back_too_long_is_given_up() -> None:
    response, spilled = _spilled()
    consumer = FakeConsumer()
    clock = Clock()
    done = Deferred.fromCoroutine(spilled.relay(
        consumer.write, consumer, clock=clock, timeout=5, stall_timeout=30))
    clock.advance(4)
    response.send(b"x")
    consumer.producer.pauseProducing()
    clock.advance(29)  # held back, but not yet for 30 s
    consumer.producer.resumeProducing()
    response.send(b"y")
    consumer.producer.pauseProducing()  # the count starts again
    clock.advance(29)
    assert not done.called
    clock.advance(1.5)
    failure = done.result
    assert isinstance(failure, Failure) and failure.check(ClientStalled)
    assert "read nothing for 30 s" in str(failure.value)
    assert response.transport.stopped and consumer.unregistered
    done.addErrback(lambda _: None)


def test_a_consumer_that_takes_some_while_holding_back_is_slow_not_stalled() -> None:
    response, spilled = _spilled()
    consumer = FakeConsumer()
    clock = Clock()
    backlog = [1_000_000]
    done = Deferred.fromCoroutine(spilled.relay(
        consumer.write, consumer, clock=clock, stall_timeout=30, backlog=lambda: backlog[0]))
    consumer.producer.pauseProducing()  # held back for minutes, draining slowly
    for left in (900_000, 500_000, 400_000):
        backlog[0] = left  # it took some within each 30 s
        clock.advance(30)
        assert not done.called
    clock.advance(30)  # then nothing for 30 s
    failure = done.result
    assert isinstance(failure, Failure) and failure.check(ClientStalled)
    assert response.transport.stopped
    done.addErrback(lambda _: None)


def test_a_consumer_that_takes_the_little_that_is_left_is_reading() -> None:
    response, spilled = _spilled()
    consumer = FakeConsumer()
    clock = Clock()
    backlog = [5000]
    done = Deferred.fromCoroutine(spilled.relay(
        consumer.write, consumer, clock=clock, stall_timeout=30, backlog=lambda: backlog[0]))
    consumer.producer.pauseProducing()
    backlog[0] = 0  # less than 64 KiB, but all of it
    clock.advance(30)
    assert not done.called
    consumer.producer.resumeProducing()
    response.end()
    assert done.result == 16 and not response.transport.stopped
