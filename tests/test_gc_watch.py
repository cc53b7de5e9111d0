"""Garbage collection: start-up objects frozen, every pause measured, long ones logged."""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Callable, Iterator

import pytest
from twisted.logger import capturedLogs

from gateway.gc_watch import GarbageCollection


def _ticking(step: float) -> Callable[[], float]:
    """A clock that moves ``step`` seconds at every reading."""
    now = [100.0]

    def read() -> float:
        now[0] += step
        return now[0]

    return read


@pytest.fixture
def running() -> Iterator[Callable[..., GarbageCollection]]:
    started: list[GarbageCollection] = []

    def start(*args: object, **kwargs: object) -> GarbageCollection:
        service = GarbageCollection(*args, **kwargs)  # type: ignore[arg-type]
        service.startService()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.running:
            service.stopService()


def _count(text: str, generation: int) -> int:
    found = re.search(rf'^wallaby_gc_pause_seconds_count{{generation="{generation}"}} (\d+)$',
                      text, re.MULTILINE)
    assert found, text
    return int(found.group(1))


def test_collections_are_measured_by_generation(
    running: Callable[..., GarbageCollection],
) -> None:
    service = running()
    gc.collect(0)
    gc.collect(2)
    text = service.prometheus()
    assert _count(text, 0) >= 1 and _count(text, 2) >= 1
    assert service.longest[2] > 0
    assert re.search(r'^wallaby_gc_pause_max_seconds\{generation="2"\} 0\.\d+$', text, re.M)
    service.stopService()
    after = service.pauses[2].count
    gc.collect(2)
    assert service.pauses[2].count == after  # no longer measuring
    assert service._on_collection not in gc.callbacks


def _interpreters_own_frozen() -> int:
    """What the interpreter keeps frozen with nothing of ours frozen: 0 on 3.11 and 3.13;
    on 3.12 a full collection moves the immortal objects it meets there (375 on 3.12.1)."""
    gc.unfreeze()
    gc.collect()
    return gc.get_freeze_count()


def test_start_up_objects_are_frozen_while_running(
    running: Callable[..., GarbageCollection],
) -> None:
    baseline = _interpreters_own_frozen()
    service = running()
    frozen = gc.get_freeze_count()
    assert frozen > baseline + 1000  # this test process's modules, classes and functions
    assert f"wallaby_gc_frozen_objects {frozen}\n" in service.prometheus()
    service.stopService()
    gc.collect()
    assert gc.get_freeze_count() <= baseline


def test_a_long_pause_is_logged_and_a_short_one_is_not(
    running: Callable[..., GarbageCollection],
) -> None:
    quick = running(_ticking(0.001), warn_after=0.1)
    with capturedLogs() as events:
        gc.collect(2)
    assert not [e for e in events if e.get("log_namespace") == "gateway.gc"]
    quick.stopService()
    slow = running(_ticking(0.25), warn_after=0.1)
    with capturedLogs() as events:
        gc.collect(2)
    warnings = [e for e in events if e.get("log_namespace") == "gateway.gc"]
    assert any(e["generation"] == 2 and e["milliseconds"] == pytest.approx(250)
               for e in warnings), warnings
    assert slow.longest[2] == pytest.approx(0.25)


class _Node:
    """A tracked object that can be weakly referenced."""

    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_a_long_full_collection_freezes_its_survivors(
    running: Callable[..., GarbageCollection],
) -> None:
    service = running(_ticking(0.25), warn_after=10.0, freeze_after=0.1)
    frozen = gc.get_freeze_count()
    survivors = [_Node() for _ in range(5000)]
    gc.collect(2)
    assert service.freezes == 1
    assert gc.get_freeze_count() >= frozen + len(survivors)
    assert "wallaby_gc_freezes_total 1\n" in service.prometheus()
    gc.collect(1)
    assert service.freezes == 1  # only full collections freeze


def test_a_short_full_collection_freezes_nothing(
    running: Callable[..., GarbageCollection],
) -> None:
    service = running(_ticking(0.001), freeze_after=0.1)
    frozen = gc.get_freeze_count()
    survivors = [_Node() for _ in range(5000)]
    gc.collect(2)
    assert service.freezes == 0 and gc.get_freeze_count() == frozen
    assert len(survivors) == 5000
    never = running(_ticking(0.25), warn_after=10.0, freeze_after=None)
    gc.collect(2)
    assert never.freezes == 0


def test_frozen_survivors_are_freed_by_their_last_reference_but_cycles_wait_for_stop(
    running: Callable[..., GarbageCollection],
) -> None:
    """Why closed connections must leave no reference cycle (tests/ws/test_connection_memory.py)."""
    service = running(_ticking(0.25), warn_after=10.0, freeze_after=0.1)
    plain, cyclic = _Node(), _Node()
    cyclic.peer = cyclic
    plain_ref, cyclic_ref = weakref.ref(plain), weakref.ref(cyclic)
    gc.collect(2)
    assert service.freezes == 1
    del plain, cyclic
    gc.collect(2)
    assert plain_ref() is None
    assert cyclic_ref() is not None  # frozen: the collector does not see it
    service.stopService()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert cyclic_ref() is None


class _Clock:
    """Moves ``step`` seconds at every reading; ``jump`` moves it at once."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 100.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def jump(self, seconds: float) -> None:
        self.now += seconds


def test_an_hour_after_a_freeze_a_full_collection_frees_cycles_that_died_frozen(
    running: Callable[..., GarbageCollection],
) -> None:
    clock = _Clock(0.25)
    service = running(clock, warn_after=10.0, freeze_after=0.1, refreeze_every=3600.0)
    cyclic = _Node()
    cyclic.peer = cyclic
    cyclic_ref = weakref.ref(cyclic)
    gc.collect(2)
    assert service.freezes == 1
    del cyclic
    clock.jump(3000.0)
    gc.collect(2)
    assert cyclic_ref() is not None and service.thaws == 0  # not an hour yet
    survivors = [_Node() for _ in range(5000)]
    clock.jump(700.0)
    gc.collect(2)
    assert cyclic_ref() is None and service.thaws == 1
    assert service.freezes == 3  # the thawing collection was long too: frozen again
    assert gc.get_freeze_count() >= len(survivors)
    assert "wallaby_gc_thaws_total 1\n" in service.prometheus()
    del survivors
    clock.jump(3700.0)
    clock.step = 0.001  # a short thawing collection still freezes again
    gc.collect(2)
    assert service.thaws == 2 and service.freezes == 4
    assert gc.get_freeze_count() > 1000


def test_a_thaw_happens_once_per_refreeze_period_not_at_every_collection_after(
    running: Callable[..., GarbageCollection],
) -> None:
    """After a thaw the hour starts again: the next full collections walk only what came
    after the re-freeze (else every full collection walks every object, the pauses the
    module exists to avoid)."""
    clock = _Clock(0.25)
    service = running(clock, warn_after=10.0, freeze_after=0.1, refreeze_every=3600.0)
    kept = [_Node() for _ in range(1000)]
    gc.collect(2)
    assert service.freezes == 1
    clock.jump(3601.0)
    gc.collect(2)
    assert service.thaws == 1
    for _ in range(3):
        clock.jump(10.0)
        gc.collect(2)
    assert service.thaws == 1, service.thaws
    assert len(kept) == 1000


def test_a_thawing_collection_refreezes_even_while_requests_are_in_flight(
    running: Callable[..., GarbageCollection],
) -> None:
    """A thaw unfreezes start-up's objects too; they are frozen again at once however
    busy the gateway is (the docstring's "frozen again however short it was"), else
    every later full collection walks all of them until the gateway is idle."""
    in_flight = [0]
    clock = _Clock(0.25)
    service = running(clock, warn_after=10.0, freeze_after=0.1, refreeze_every=3600.0,
                      quiet=lambda: in_flight[0] == 0)
    kept = [_Node() for _ in range(1000)]
    gc.collect(2)
    assert service.freezes == 1
    in_flight[0] = 5
    clock.jump(3601.0)
    gc.collect(2)
    assert service.thaws == 1
    assert service.freezes == 2 and service.freezes_skipped == 0
    assert gc.get_freeze_count() >= len(kept)


def test_a_collection_full_of_garbage_freezes_nothing(
    running: Callable[..., GarbageCollection],
) -> None:
    """Under heavy REST load every request dies in a cycle: freezing the survivors of such
    a collection would trap the cycles of the requests in flight, again and again."""
    service = running(_ticking(0.25), warn_after=10.0, freeze_after=0.1)
    frozen = gc.get_freeze_count()
    survivors = [_Node() for _ in range(100)]
    for _ in range(20_000):  # dying cycles, as requests leave them
        node = _Node()
        node.peer = node
    del node
    gc.collect(2)
    assert service.freezes == 0 and service.freezes_skipped == 1
    assert gc.get_freeze_count() == frozen
    assert "wallaby_gc_freezes_skipped_total 1\n" in service.prometheus()
    assert len(survivors) == 100


def test_freezes_are_at_least_min_freeze_interval_apart(
    running: Callable[..., GarbageCollection],
) -> None:
    clock = _Clock(0.25)
    service = running(clock, warn_after=10.0, freeze_after=0.1, min_freeze_interval=60.0)
    kept = [_Node() for _ in range(1000)]
    gc.collect(2)
    assert service.freezes == 1
    kept += [_Node() for _ in range(1000)]
    clock.jump(30.0)
    gc.collect(2)
    assert service.freezes == 1 and service.freezes_skipped == 1  # too soon
    clock.jump(31.0)
    gc.collect(2)
    assert service.freezes == 2
    assert gc.get_freeze_count() >= len(kept)


def test_nothing_is_frozen_while_a_request_is_in_flight(
    running: Callable[..., GarbageCollection],
) -> None:
    """Requests in flight die in cycles: frozen, they would wait an hour for the thaw."""
    in_flight = [1]
    clock = _Clock(0.25)
    service = running(clock, warn_after=10.0, freeze_after=0.1,
                      quiet=lambda: in_flight[0] == 0)
    kept = [_Node() for _ in range(1000)]
    gc.collect(2)
    assert service.freezes == 0 and service.freezes_skipped == 1
    in_flight[0] = 0
    clock.jump(1.0)
    gc.collect(2)
    assert service.freezes == 1
    assert gc.get_freeze_count() >= len(kept)
