"""Shared pieces of the WebSocket benchmarks: the stack, load-client children, the writer."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benches.procs import (
    ROOT,
    Gateway,
    Nginx,
    basic,
    children,
    couch_request,
    cpu_seconds,
    raise_nofile,
    rss_bytes,
    start_upstream,
    stop_on_sigterm,
    tcp_connections,
)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Stack:
    """Upstream, a logging nginx in front of it for the gateway, and the gateway.

    The gateway reaches the upstream only through ``counter`` (nginx with an access
    log), so every upstream request it makes is counted; load clients of the direct
    baseline and the writer go straight to the upstream.
    """

    workdir: Path
    upstream: Any
    counter: Nginx
    gateway: Gateway
    access_log: Path
    auth: str

    @classmethod
    def start(cls, prefix: str, extra_env: dict[str, str] | None = None) -> Stack:
        stop_on_sigterm()
        raise_nofile()
        (ROOT / "var").mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=ROOT / "var"))
        upstream = start_upstream(workdir)
        access_log = workdir / "upstream-access.log"
        counter = gateway = None
        try:
            counter = Nginx.start(workdir / "nginx", upstream.port, access_log=access_log)
            url = (f"http://{upstream.admin_username}:{upstream.admin_password}"
                   f"@127.0.0.1:{counter.port}")
            env = dict(extra_env or {})
            gateway = Gateway.start(url, extra_env=env, module="benches.gateway_ws")
        except BaseException:
            if counter:
                counter.stop()
            upstream.stop()
            raise
        auth = basic(upstream.admin_username, upstream.admin_password)
        return cls(workdir, upstream, counter, gateway, access_log, auth)

    @property
    def upstream_pids(self) -> list[int]:
        pid = self.upstream.process.pid
        return [pid, *children(pid)]

    def gateway_cpu(self) -> float:
        return cpu_seconds([self.gateway.process.pid])

    def upstream_cpu(self) -> float:
        return cpu_seconds(self.upstream_pids)

    def gateway_rss(self) -> int:
        return rss_bytes(self.gateway.process.pid)

    def upstream_feed_connections(self) -> int:
        """Established TCP connections gateway → upstream (through the counting nginx)."""
        return tcp_connections(self.gateway.process.pid, self.counter.port)

    def gc_pauses(self) -> dict[str, float]:
        """The gateway's garbage collection so far (its ``/metrics``): pauses by generation
        (count, longest in ms), the objects frozen and the full collections that froze."""
        url = f"http://127.0.0.1:{self.gateway.port}/metrics"
        with urllib.request.urlopen(url, timeout=120) as answer:
            text = answer.read().decode()
        found: dict[str, float] = {}
        for name, generation, value in re.findall(
            r'^wallaby_gc_pause_(seconds_count|max_seconds)\{generation="(\d)"\} (\S+)$',
            text, re.MULTILINE,
        ):
            if name == "seconds_count":
                found[f"gen{generation}_collections"] = float(value)
            else:
                found[f"gen{generation}_longest_ms"] = round(float(value) * 1000, 1)
        frozen = re.search(r"^wallaby_gc_frozen_objects (\d+)$", text, re.MULTILINE)
        if frozen:
            found["frozen_objects"] = float(frozen.group(1))
        freezes = re.search(r"^wallaby_gc_freezes_total (\d+)$", text, re.MULTILINE)
        if freezes:
            found["freezes"] = float(freezes.group(1))
        return found

    def ws_metrics(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.gateway.port}/bench/ws-metrics"
        with urllib.request.urlopen(url, timeout=120) as answer:
            metrics: dict[str, Any] = json.loads(answer.read())
            return metrics

    def upstream_requests(self, since: float, until: float | None = None) -> dict[str, int]:
        """Gateway → upstream requests logged by nginx in [since, until] (epoch seconds)."""
        counts: dict[str, int] = {}
        if not self.access_log.exists():
            return counts
        for line in self.access_log.read_text().splitlines():
            stamp, _took, _status, _size, request = line.split(" ", 4)
            when = float(stamp)
            if when < since or (until is not None and when > until):
                continue
            path = request.strip('"').split(" ")[1] if " " in request else request
            counts[classify(path)] = counts.get(classify(path), 0) + 1
        return counts

    def max_concurrent_changes(self, since: float, kind: str = "feed=") -> int:
        """Most ``_changes`` requests of a kind in flight at once (from nginx's log)."""
        events = []
        if not self.access_log.exists():
            return 0
        for line in self.access_log.read_text().splitlines():
            stamp, took, _status, _size, request = line.split(" ", 4)
            end = float(stamp)
            if (end < since or "/_changes" not in request or kind not in request
                    or (kind == "since=" and "feed=" in request)):
                continue
            events += [(end - float(took), 1), (end, -1)]
        current = peak = 0
        for _when, delta in sorted(events, key=lambda e: (e[0], e[1])):
            current += delta
            peak = max(peak, current)
        return peak

    def stop(self) -> None:
        self.gateway.stop()
        self.counter.stop()
        self.upstream.stop()


def listen_overflows() -> int:
    """The kernel's TcpExt ListenOverflows counter (system-wide: accept queues that were full)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def gateway_env() -> dict[str, str]:
    """Extra gateway settings for a run, from ``BENCH_GATEWAY_ENV`` (a JSON object)."""
    env: dict[str, str] = json.loads(os.environ.get("BENCH_GATEWAY_ENV") or "{}")
    return env


def classify(path: str) -> str:
    """A coarse kind of upstream request, for counting."""
    base, _, query = path.partition("?")
    if base.endswith("/_changes"):
        if "feed=" in query:
            return "_changes live feed (the shared feed)"
        if "since=now" in query:
            return "_changes since=now (feed start)"
        return "_changes since=<seq> (catch-up)"
    if base == "/_session":
        return "_session (handshake auth)"
    if base.count("/") == 1:
        return "GET /db (subscribe authorization / re-check)"
    return "other"


class LoadProcess:
    """A :mod:`benches.wsload` child, driven over stdin/stdout."""

    def __init__(self, args: list[str], log: Path | None = None) -> None:
        errors = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benches.wsload", *args], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
            preexec_fn=raise_nofile)
        self.started = self.read(30)

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        import select

        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("load client did not answer")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("load client exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, command: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        self.send(command)
        return self.read(timeout)

    def cpu(self) -> float:
        return cpu_seconds([self.process.pid])

    def close(self) -> None:
        try:
            self.send({"cmd": "exit"})
            self.process.wait(30)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.process.kill()
            self.process.wait(10)


def spawn_clients(mode: str, port: int, db: str, auth: str, total: int,
                  processes: int) -> list[LoadProcess]:
    """Split ``total`` connections over ``processes`` load children."""
    loads = []
    for i in range(processes):
        share = total // processes + (1 if i < total % processes else 0)
        loads.append(LoadProcess(["--mode", mode, "--port", str(port), "--db", db,
                                  "--auth", auth, "--clients", str(share)],
                                 log=ROOT / "var" / "bench-wsload.log"))
    return loads


def call_all(loads: list[LoadProcess], command: dict[str, Any],
             timeout: float = 300) -> list[dict[str, Any]]:
    """Send a command to every child at once, then collect the answers."""
    for load in loads:
        load.send(command)
    return [load.read(timeout) for load in loads]


@dataclass
class Writer:
    """Writes new documents ``f<n>`` straight to the upstream at a fixed rate.

    ``acks[n]`` is the ``time.monotonic()`` at which the PUT of ``f<n>`` was answered.
    """

    port: int
    db: str
    auth: str
    acks: dict[int, float] = field(default_factory=dict)
    next_doc: int = 0

    def __post_init__(self) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def put(self, body_pad: int = 32) -> int:
        number = self.next_doc
        self.next_doc += 1
        body = json.dumps({"n": number, "pad": "x" * body_pad})
        for attempt in range(2):
            try:
                self.connection.request("PUT", f"/{self.db}/f{number}", body=body, headers={
                    "Authorization": self.auth, "Content-Type": "application/json"})
                answer = self.connection.getresponse()
                answer.read()
                break
            except (ConnectionError, http.client.HTTPException):
                # The upstream closed the idle keep-alive connection: reconnect once.
                self.connection.close()
                if attempt:
                    raise
        self.acks[number] = time.monotonic()
        if answer.status not in (201, 202):
            raise RuntimeError(f"PUT f{number}: {answer.status}")
        return number

    def run(self, rate: float, seconds: float) -> list[int]:
        """PUT ``rate`` documents per second for ``seconds``; return their numbers."""
        written = []
        start = time.monotonic()
        count = int(rate * seconds)
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            written.append(self.put())
        return written


def load_deliveries(paths: list[str]) -> dict[str, Any]:
    """Concatenate the .npz dumps of several load children (connection ids made unique)."""
    import numpy as np

    parts: dict[str, list[Any]] = {"conn": [], "gen": [], "doc": [], "time": []}
    offset = 0
    subscribe = []
    for path in paths:
        data = np.load(path)
        parts["conn"].append(data["conn"].astype(np.int64) + offset)
        for key in ("gen", "doc", "time"):
            parts[key].append(data[key])
        subscribe.append(data["subscribe_sent"])
        offset += len(data["subscribe_sent"])
        os.unlink(path)
    merged = {key: np.concatenate(value) if value else np.array([]) for key, value in parts.items()}
    merged["subscribe_sent"] = np.concatenate(subscribe) if subscribe else np.array([])
    merged["connections"] = offset
    return merged


def percentiles(values: Any) -> dict[str, float]:
    """p50/p99/max in milliseconds of an array of seconds."""
    import numpy as np

    if len(values) == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": float(np.percentile(values, 50) * 1000),
            "p99_ms": float(np.percentile(values, 99) * 1000),
            "max_ms": float(np.max(values) * 1000)}


def machine() -> dict[str, Any]:
    from benches.rest_proxy import machine as rest_machine

    return rest_machine()


def create_db(stack: Stack, db: str) -> None:
    couch_request(stack.upstream.url, "PUT", f"/{db}", stack.auth)
