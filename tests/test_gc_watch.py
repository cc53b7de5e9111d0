"""Garbage collection: start-up objects frozen, every pause measured, long ones logged."""

from __future__ import annotations

import gc
import re
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


def test_start_up_objects_are_frozen_while_running(
    running: Callable[..., GarbageCollection],
) -> None:
    assert gc.get_freeze_count() == 0
    service = running()
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # this test process's modules, classes and functions
    assert f"wallaby_gc_frozen_objects {frozen}\n" in service.prometheus()
    service.stopService()
    assert gc.get_freeze_count() == 0


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
