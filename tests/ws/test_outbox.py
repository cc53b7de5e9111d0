"""The connection's send queue, without sockets (gateway.ws.outbox)."""

from __future__ import annotations

import pytest

from gateway.ws.outbox import Outbox, Outgoing


def _drain(outbox: Outbox) -> list[str]:
    return [outbox.pop().message for _ in range(len(outbox))]


def test_messages_leave_oldest_first_and_their_bytes_are_counted() -> None:
    outbox = Outbox()
    assert not outbox and outbox.bytes == 0
    outbox.put(Outgoing("a", 3))
    outbox.put(Outgoing("b", 5))
    assert len(outbox) == 2 and outbox.bytes == 8
    assert outbox.pop().message == "a" and outbox.bytes == 5
    assert outbox.pop().message == "b" and outbox.bytes == 0
    with pytest.raises(KeyError):
        outbox.pop()


def test_a_later_change_to_the_same_document_replaces_the_waiting_one() -> None:
    outbox = Outbox()
    sub = object()
    assert outbox.put(Outgoing("doc1 rev1", 10, sub, "1"), ("c", id(sub), "doc1")) is False
    outbox.put(Outgoing("doc2 rev1", 20, sub, "2"), ("c", id(sub), "doc2"))
    assert outbox.put(Outgoing("doc1 rev2", 12, sub, "3"), ("c", id(sub), "doc1")) is True
    assert outbox.bytes == 32
    # The replacement goes last: its seq is the newest, and the subscription's resume
    # seq moves past each written change in order.
    assert _drain(outbox) == ["doc2 rev1", "doc1 rev2"]


def test_messages_without_a_coalescing_key_are_never_replaced() -> None:
    outbox = Outbox()
    for name in ("state", "state", "error"):
        assert outbox.put(Outgoing(name, 1)) is False
    assert _drain(outbox) == ["state", "state", "error"]


def test_the_same_document_in_two_subscriptions_is_kept_twice() -> None:
    outbox = Outbox()
    one, two = object(), object()
    outbox.put(Outgoing("one", 1, one), ("c", id(one), "doc"))
    outbox.put(Outgoing("two", 1, two), ("c", id(two), "doc"))
    assert _drain(outbox) == ["one", "two"]


def test_forget_drops_only_that_subscriptions_messages() -> None:
    outbox = Outbox()
    revoked, other = object(), object()
    outbox.put(Outgoing("secret 1", 100, revoked), ("c", id(revoked), "a"))
    outbox.put(Outgoing("other", 7, other), ("c", id(other), "a"))
    outbox.put(Outgoing("secret 2", 100, revoked))
    outbox.forget(revoked)
    assert outbox.bytes == 7
    assert _drain(outbox) == ["other"]


def test_clear_empties_the_queue_and_its_count() -> None:
    outbox = Outbox()
    outbox.put(Outgoing("a", 4))
    outbox.put(Outgoing("b", 4), "key")
    outbox.clear()
    assert not outbox and outbox.bytes == 0
    outbox.put(Outgoing("b2", 2), "key")  # a key used before the clear is free again
    assert _drain(outbox) == ["b2"]
