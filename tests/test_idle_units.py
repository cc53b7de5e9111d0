"""gateway/couch/idle.py: IdleTimeout and StallWatch deadlines, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from gateway.couch.idle import IdleTimeout, StallWatch


def test_idle_timeout_counts_again_after_a_pause_and_touch_pushes_it_back() -> None:
    clock, fired = Clock(), []
    idle = IdleTimeout(clock, 10, lambda: fired.append(clock.seconds()))
    clock.advance(9)
    idle.touch()  # progress: the silence starts again
    clock.advance(9)
    assert not fired
    idle.pause()  # the consumer holds the transfer back: not the upstream's silence
    clock.advance(100)
    assert not fired
    idle.resume()  # counting again, from now
    clock.advance(9.9)
    assert not fired
    clock.advance(0.2)
    assert len(fired) == 1 and abs(fired[0] - 128.1) < 1e-6 and idle.expired
    idle.resume()  # expired once: never again
    clock.advance(100)
    assert len(fired) == 1


def test_idle_timeout_stopped_never_fires_even_if_resumed() -> None:
    clock, fired = Clock(), []
    idle = IdleTimeout(clock, 10, lambda: fired.append(1))
    idle.stop()
    idle.resume()  # a late resumeProducing after the transfer ended
    clock.advance(100)
    assert not fired and not clock.getDelayedCalls()


def test_stall_watch_gives_up_once_the_backlog_stops_shrinking() -> None:
    """A client that took some, then nothing for ``seconds``, is stalled."""
    clock, fired, backlog = Clock(), [], [1000]
    watch = StallWatch(clock, 30, lambda: fired.append(clock.seconds()), lambda: backlog[0])
    watch.hold()
    backlog[0] = 600  # took some within the first 30 s
    clock.advance(30)
    assert not fired
    clock.advance(30)  # then nothing at all
    assert fired == [60] and watch.expired


def test_stall_watch_an_unchanged_backlog_is_a_stall() -> None:
    clock, fired = Clock(), []
    watch = StallWatch(clock, 30, lambda: fired.append(1), lambda: 1000)
    watch.hold()
    clock.advance(30)
    assert fired == [1]
