"""The send loop of a broadcast split between threads (``gateway.send_threads``)."""

from __future__ import annotations

import gc
import os
import socket
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogEvent, globalLogPublisher

from gateway import send_threads
from gateway.config import MAX_SEND_THREADS, Settings
from gateway.send_threads import SendThreads, cpu_quota

FRAME = b"\x81\x05hello"


class RecordingSocket:
    """Takes every send whole (or as told) and remembers which thread sent."""

    def __init__(self, takes: int | None = None, raises: BaseException | None = None) -> None:
        self.takes = takes
        self.raises = raises
        self.sent: list[tuple[int, bytes]] = []

    def send(self, data: bytes) -> int:
        if self.raises is not None:
            raise self.raises
        self.sent.append((threading.get_ident(), data))
        return len(data) if self.takes is None else self.takes


@pytest.fixture
def started() -> Iterator[list[SendThreads]]:
    """Send-thread services to stop after the test."""
    services: list[SendThreads] = []
    yield services
    for service in services:
        if service.running:
            service.stopService()


def start(started: list[SendThreads], threads: int, min_slice: int) -> SendThreads:
    service = SendThreads(threads, min_slice=min_slice)
    service.startService()
    started.append(service)
    return service


def helper_threads() -> set[threading.Thread]:
    """The send threads alive now."""
    return {t for t in threading.enumerate() if t.name.startswith("wallaby-send-")}


def test_real_sockets_each_get_the_frame_once(started: list[SendThreads]) -> None:
    pairs = [socket.socketpair() for _ in range(40)]
    try:
        for ours, _ in pairs:
            ours.setblocking(False)
        service = start(started, threads=3, min_slice=4)
        sent = service.send_each([ours for ours, _ in pairs], FRAME)
        assert sent == [len(FRAME)] * 40
        assert service.split_loops == 1
        for _, theirs in pairs:
            theirs.settimeout(5)
            assert theirs.recv(100) == FRAME
            theirs.setblocking(False)
            with pytest.raises(BlockingIOError):
                theirs.recv(100)  # exactly once
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_slices_are_sent_by_different_threads_the_reactor_thread_first(
    started: list[SendThreads],
) -> None:
    service = start(started, threads=3, min_slice=2)
    sockets = [RecordingSocket() for _ in range(30)]
    assert service.send_each(sockets, FRAME) == [len(FRAME)] * 30  # type: ignore[arg-type]
    senders = [s.sent[0][0] for s in sockets]
    assert all(len(s.sent) == 1 and s.sent[0][1] == FRAME for s in sockets)
    assert senders[:10] == [threading.get_ident()] * 10
    assert len(set(senders[10:20])) == 1 and len(set(senders[20:])) == 1
    assert len({senders[0], senders[10], senders[20]}) == 3


def test_a_full_or_failing_socket_reports_what_it_took(started: list[SendThreads]) -> None:
    service = start(started, threads=2, min_slice=2)
    sockets = [RecordingSocket() for _ in range(8)]
    sockets[1] = RecordingSocket(takes=3)
    sockets[6] = RecordingSocket(takes=2)
    sockets[2] = RecordingSocket(raises=BlockingIOError())
    sockets[7] = RecordingSocket(raises=ConnectionResetError())
    whole = len(FRAME)
    assert service.send_each(sockets, FRAME) == [  # type: ignore[arg-type]
        whole, 3, 0, whole, whole, whole, 2, 0]
    assert service.split_loops == 1


def test_an_unexpected_error_in_a_helper_leaves_0_for_the_sockets_it_did_not_reach(
    started: list[SendThreads],
) -> None:
    service = start(started, threads=2, min_slice=2)
    sockets = [RecordingSocket() for _ in range(8)]
    sockets[5] = RecordingSocket(raises=RuntimeError("boom"))
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        sent = service.send_each(sockets, FRAME)  # type: ignore[arg-type]
    finally:
        globalLogPublisher.removeObserver(events.append)
    whole = len(FRAME)
    # 4..7 are the helper's: 4 was sent, 5 raised, 6 and 7 were never tried.
    assert sent == [whole] * 5 + [0, 0, 0]
    assert [len(s.sent) for s in sockets] == [1] * 5 + [0, 0, 0]
    assert any("boom" in repr(event.get("error")) for event in events), events
    # The helper survived and takes the next loop.
    again = [RecordingSocket() for _ in range(8)]
    assert service.send_each(again, FRAME) == [whole] * 8  # type: ignore[arg-type]
    assert again[7].sent[0][0] != threading.get_ident()


def test_a_small_loop_stays_on_the_reactor_thread(started: list[SendThreads]) -> None:
    service = start(started, threads=4, min_slice=5)
    sockets = [RecordingSocket() for _ in range(9)]
    service.send_each(sockets, FRAME)  # type: ignore[arg-type]
    assert {s.sent[0][0] for s in sockets} == {threading.get_ident()}
    assert service.split_loops == 0
    # Ten make two slices of five; three helpers are not all needed.
    sockets = [RecordingSocket() for _ in range(10)]
    service.send_each(sockets, FRAME)  # type: ignore[arg-type]
    assert len({s.sent[0][0] for s in sockets}) == 2


def test_helpers_start_and_stop_with_the_service() -> None:
    before = len(helper_threads())
    service = SendThreads(3, min_slice=1)
    assert len(helper_threads()) == before
    sockets = [RecordingSocket() for _ in range(6)]
    service.send_each(sockets, FRAME)  # type: ignore[arg-type]
    assert {s.sent[0][0] for s in sockets} == {threading.get_ident()}  # not started: alone
    service.startService()
    threads = helper_threads()
    assert len(threads) == before + 2
    service.stopService()
    assert len(helper_threads()) == before
    assert not any(t.is_alive() for t in threads)
    sockets = [RecordingSocket() for _ in range(6)]
    assert service.send_each(sockets, FRAME) == [len(FRAME)] * 6  # type: ignore[arg-type]
    assert {s.sent[0][0] for s in sockets} == {threading.get_ident()}


def test_one_thread_starts_no_helper() -> None:
    before = len(helper_threads())
    service = SendThreads(1, min_slice=1)
    service.startService()
    try:
        assert len(helper_threads()) == before
        sockets = [RecordingSocket() for _ in range(6)]
        service.send_each(sockets, FRAME)  # type: ignore[arg-type]
        assert service.split_loops == 0
    finally:
        service.stopService()


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 2), (3, 3), (4, 4), (16, 4)])
def test_zero_picks_the_usable_cpus_up_to_a_few(monkeypatch: Any, cpus: int, threads: int) -> None:
    monkeypatch.setattr(send_threads, "usable_cpus", lambda: cpus)
    assert SendThreads(0).threads == threads


def test_usable_cpus_follows_the_affinity_mask_without_a_quota() -> None:
    expected = len(os.sched_getaffinity(0))
    quota = cpu_quota(Path("/sys/fs/cgroup"), Path("/proc/self/cgroup"))
    if quota is not None:
        expected = min(expected, -(-quota // 1))
    assert send_threads.usable_cpus() == expected


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="threads"):
        SendThreads(-1)
    with pytest.raises(ValueError, match="min_slice"):
        SendThreads(2, min_slice=0)


def test_the_setting_is_read_and_checked() -> None:
    assert Settings.from_env({}).ws_send_threads == 0
    assert MAX_SEND_THREADS == 64  # README: "at most 64"
    assert Settings.from_env({"WALLABY_WS_SEND_THREADS": "64"}).ws_send_threads == 64
    assert Settings.from_env({"WALLABY_WS_SEND_THREADS": "2"}).ws_send_threads == 2
    with pytest.raises(ValueError, match="WALLABY_WS_SEND_THREADS: must be 0 or more"):
        Settings.from_env({"WALLABY_WS_SEND_THREADS": "-1"})
    with pytest.raises(ValueError, match=r"^WALLABY_WS_SEND_THREADS: at most 64"):
        Settings.from_env({"WALLABY_WS_SEND_THREADS": "65"})
    with pytest.raises(ValueError, match="WALLABY_WS_SEND_THREADS"):
        Settings.from_env({"WALLABY_WS_SEND_THREADS": "two"})


class Halt(BaseException):
    """Not an ``Exception``: what ``except Exception`` would let kill a helper."""


def test_a_helper_answers_even_when_its_slice_raises_a_base_exception(
    started: list[SendThreads],
) -> None:
    """Otherwise the helper dies without a reply and the reactor thread waits for ever."""
    service = start(started, threads=2, min_slice=2)
    sockets = [RecordingSocket() for _ in range(8)]
    sockets[6] = RecordingSocket(raises=Halt())
    result: list[list[int]] = []
    caller = threading.Thread(target=lambda: result.append(
        service.send_each(sockets, FRAME)), daemon=True)  # type: ignore[arg-type]
    caller.start()
    caller.join(5)
    assert not caller.is_alive(), "send_each never returned: the helper did not answer"
    assert result == [[len(FRAME)] * 6 + [0, 0]]
    again = [RecordingSocket() for _ in range(8)]
    assert service.send_each(again, FRAME) == [len(FRAME)] * 8  # type: ignore[arg-type]


def test_the_reactor_threads_own_slice_failing_still_waits_for_the_helpers(
    started: list[SendThreads],
) -> None:
    """No helper may still be sending once ``send_each`` has returned or raised."""
    service = start(started, threads=2, min_slice=2)
    release = threading.Event()

    class Slow(RecordingSocket):
        def send(self, data: bytes) -> int:
            release.wait(5)
            return super().send(data)

    sockets: list[RecordingSocket] = [RecordingSocket() for _ in range(8)]
    sockets[0] = RecordingSocket(raises=RuntimeError("own slice"))
    sockets[7] = Slow()
    threading.Timer(0.2, release.set).start()
    with pytest.raises(RuntimeError, match="own slice"):
        service.send_each(sockets, FRAME)  # type: ignore[arg-type]
    assert len(sockets[7].sent) == 1  # the helper had finished before it raised


def test_fewer_than_512_sockets_stay_on_the_reactor_thread_by_default(
    started: list[SendThreads],
) -> None:
    service = SendThreads(4)
    service.startService()
    started.append(service)
    sockets = [RecordingSocket() for _ in range(511)]
    service.send_each(sockets, FRAME)  # type: ignore[arg-type]
    assert service.split_loops == 0
    assert {s.sent[0][0] for s in sockets} == {threading.get_ident()}
    sockets = [RecordingSocket() for _ in range(512)]
    service.send_each(sockets, FRAME)  # type: ignore[arg-type]
    assert service.split_loops == 1
    assert len({s.sent[0][0] for s in sockets}) == 2  # two slices of 256, one helper woken


class Roster(list):  # type: ignore[type-arg]
    """A list of sockets that can be watched with a weak reference."""


def test_a_helper_holds_no_reference_to_the_last_broadcast(started: list[SendThreads]) -> None:
    """A batch frame can be megabytes and a roster thousands of sockets: once the loop
    is over, only the caller holds them."""
    service = start(started, threads=2, min_slice=2)
    pairs = [socket.socketpair() for _ in range(8)]
    try:
        for ours, _ in pairs:
            ours.setblocking(False)
        sockets = Roster(ours for ours, _ in pairs)
        frame = bytes(4 * 1024 * 1024)
        refs_before = sys.getrefcount(frame)
        watched = weakref.ref(sockets)
        sent = service.send_each(sockets, frame)
        assert service.split_loops == 1 and sent[7] > 0
        assert sys.getrefcount(frame) == refs_before, "the frame is still referenced"
        del sockets, sent
        gc.collect()
        assert watched() is None, "the roster of the last split loop is still alive"
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def _cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self-cgroup").write_text(membership)
    return root, tmp_path / "self-cgroup"


def test_a_cgroup_v2_quota_limits_the_cpus(tmp_path: Path) -> None:
    root, membership = _cgroup(tmp_path, "0::/kubepods/pod1/c1\n", {
        "kubepods/pod1/c1/cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "150000 100000\n",
        "kubepods/cpu.max": "max 100000\n",
    })
    assert cpu_quota(root, membership) == 1.5
    assert send_threads.usable_cpus(root, membership) == min(2, len(os.sched_getaffinity(0)))


def test_a_cgroup_v1_quota_limits_the_cpus(tmp_path: Path) -> None:
    root, membership = _cgroup(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cpu_quota(root, membership) == 1.0
    assert send_threads.usable_cpus(root, membership) == 1


def test_no_quota_leaves_the_affinity_mask(tmp_path: Path) -> None:
    root, membership = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cpu_quota(root, membership) is None
    assert send_threads.usable_cpus(root, membership) == len(os.sched_getaffinity(0))
    assert cpu_quota(root, tmp_path / "missing") is None
    root, membership = _cgroup(tmp_path / "bad", "0::/\n", {"cpu.max": "garbage\n"})
    assert cpu_quota(root, membership) is None
