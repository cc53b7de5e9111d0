"""Unit tests of the WebSocket resume core that mutation testing found missing (the
shared feed's memory of recent changes, the catch-up join, single-flight waiters): each
fails with a one-line change the rest of the suite let pass. Pure logic: no sockets."""

from __future__ import annotations

from typing import Any

from gateway.ws.hub import PreparedChange, RecentChanges


def _change(seq: Any, doc_id: str = "d", size: int = 10) -> PreparedChange:
    return PreparedChange(doc_id, "1-a", seq, None, size, 0.0)


def test_a_replayed_start_seq_is_never_served_from_memory() -> None:
    """The feed started from ``s0`` and then brought a row whose seq is ``s0`` again (a
    clustered CouchDB replaying after a rewind): ``s0`` is ambiguous, so a resume from
    it reads upstream (``None``) instead of getting the whole ring, whose replayed row
    the client already had."""
    ring = RecentChanges(max_changes=10, max_bytes=1000)
    ring.start("s0")
    ring.append(_change("s0", "replayed"))
    ring.append(_change("s1", "next"))
    assert ring.after("s0") is None
    assert ring.after("s1") == []


async def _still_current(answer: Any) -> bool:
    from types import SimpleNamespace

    from gateway.ws.resume import still_current

    class Transport:
        async def request(self, method: str, segments: list[str], **kwargs: Any) -> Any:
            assert (method, segments[1:], kwargs["json"]) == ("POST", ["_all_docs"], {"keys": ["a"]})
            if isinstance(answer, Exception):
                raise answer
            return answer

    host = SimpleNamespace(user_transport=Transport())
    sub = SimpleNamespace(request=SimpleNamespace(db="db"))
    change = PreparedChange("a", "2-b", "9", None, 10, 0.0)
    return await still_current(host, sub, change)  # type: ignore[arg-type]


async def test_a_row_couchdb_cannot_judge_goes_out() -> None:
    """resume.still_current: "When CouchDB cannot say, the change goes out: a repeat is
    better than a loss." CouchDB failing (503, unreachable) while a resume asks whether a
    buffered row is the winner must not drop the row."""
    from gateway.errors import CouchUnreachable, UpstreamServerError

    assert await _still_current(UpstreamServerError("down", status=503)) is True
    assert await _still_current(CouchUnreachable("gone")) is True
    assert await _still_current({"rows": [{"key": "a", "error": "not_found"}]}) is True
    assert await _still_current({"rows": [{"id": "a", "key": "a", "value": {"rev": "2-b"}}]}) is True
    assert await _still_current({"rows": [{"id": "a", "key": "a", "value": {"rev": "3-c"}}]}) is False


def test_a_waiter_cancelled_while_the_shared_result_is_handed_out() -> None:
    """single_flight: a waiter whose turn comes after it was cancelled by an earlier
    waiter's callback (finish() has already taken the list) is skipped, and every other
    waiter still gets the result (no AlreadyCalledError out of finish)."""
    from twisted.internet.defer import CancelledError, Deferred

    from gateway.singleflight import single_flight

    inflight: dict[Any, Any] = {}
    gate: Deferred[str] = Deferred()

    async def call() -> str:
        return await gate

    first = single_flight(inflight, "k", call)
    second = single_flight(inflight, "k", call)
    third = single_flight(inflight, "k", call)
    got: list[Any] = []
    first.addCallback(lambda value: (got.append(("first", value)), second.cancel()))
    second.addErrback(lambda f: got.append(("second", f.check(CancelledError))))
    third.addCallback(lambda value: got.append(("third", value)))
    gate.callback("answer")
    assert got == [("first", "answer"), ("second", CancelledError), ("third", "answer")]
    assert inflight == {}
