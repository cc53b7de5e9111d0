"""Processes for benchmarks: the upstream server, nginx and the gateway, plus CPU accounting.

Everything listens on 127.0.0.1 only. Each helper returns an object with ``stop()``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gateway.embedded import EmbeddedCouch, free_port

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU seconds consumed so far by the given processes."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def preemptions(pids: list[int]) -> int:
    """Involuntary context switches so far, summed over every thread of the processes.

    A thread is switched out involuntarily when the scheduler gives its CPU to another
    thread while it still had work: how much other processes get in its way.
    """
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except FileNotFoundError:
                continue
            for line in status.splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def pin(pids: list[int], cpus: set[int]) -> None:
    """Restrict every thread of the given processes to ``cpus`` (``sched_setaffinity``).

    Threads started later inherit the mask of the thread that starts them.
    """
    for pid in pids:
        try:
            tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError:
            continue
        for tid in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


def stop_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, ``kill``) into ``SystemExit`` so ``finally`` stops children."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def raise_nofile(limit: int = 65536) -> int:
    """Raise this process's open-files soft limit (up to the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tcp_connections(pid: int, remote_port: int) -> int:
    """Established TCP connections of ``pid`` to 127.0.0.1:``remote_port``.

    Reads the process's sockets from ``/proc/<pid>/fd`` and matches them with
    ``/proc/net/tcp`` (state 01 = ESTABLISHED), independently of the gateway's counters.
    """
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        remote, state, inode = parts[2], parts[3], parts[9]
        if state == "01" and inode in inodes and int(remote.split(":")[1], 16) == remote_port:
            count += 1
    return count


def basic(username: str, password: str) -> str:
    """An Authorization header value."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def wait_http(url: str, timeout: float = 30.0, auth: str | None = None) -> None:
    """Poll a URL until it answers 2xx."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status < 300:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def couch_request(url: str, method: str, path: str, auth: str, body: object = None) -> object:
    """A small synchronous CouchDB call for setting up fixtures."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


@dataclass
class Nginx:
    """nginx as a keep-alive reverse proxy in front of the upstream."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, workdir: Path, upstream_port: int, workers: int = 1,
              access_log: Path | None = None, buffer_size: str | None = None) -> Nginx:
        """Start nginx with a generated configuration.

        With ``access_log``, every proxied request is logged (``$request``, status,
        bytes): the benchmarks count the gateway's upstream requests from it. With
        ``buffer_size`` (e.g. ``1m``), unbuffered proxying moves that much per read
        (nginx's default is one memory page).
        """
        if shutil.which("nginx") is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        log_directive = "access_log off;" if access_log is None else (
            "log_format bench '$msec $request_time $status $body_bytes_sent \"$request\"'; "
            f"access_log {access_log} bench;")
        conf.write_text(f"""
worker_processes {workers};
error_log {workdir}/logs/error.log warn;
pid {workdir}/nginx.pid;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  {log_directive}
  proxy_read_timeout 3600s;
  proxy_send_timeout 3600s;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  upstream couch {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://couch;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;{f" proxy_buffer_size {buffer_size}; proxy_buffers 4 {buffer_size}; proxy_busy_buffers_size {buffer_size}; client_body_buffer_size {buffer_size};" if buffer_size else ""}
      client_max_body_size 0;
      proxy_request_buffering off;
    }}
  }}
}}
""")
        process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(workdir), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{port}/")
        return cls(process, port)

    def pids(self) -> list[int]:
        """Master and workers."""
        return [self.process.pid, *children(self.process.pid)]

    def stop(self) -> None:
        """Stop nginx."""
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Gateway:
    """``python -m gateway run`` against an upstream, as a child process."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, upstream_admin_url: str, extra_env: dict[str, str] | None = None,
              module: str = "gateway", nofile: int = 65536, checkout: Path = ROOT,
              script: Path | None = None) -> Gateway:
        """Start the gateway and wait for ``/health``.

        ``module`` is ``gateway`` (``python -m gateway run``) or ``benches.gateway_ws``
        (the same, with the live-changes endpoint and ``/bench/ws-metrics``). The
        child's open-files limit is raised to ``nofile``. ``checkout`` runs the gateway
        of another checkout (e.g. a ``git worktree`` of an older commit) with this one's
        Python environment, for a before/after comparison in one run. ``script`` runs
        that file (``python <script> run``) instead of ``module``, importing ``gateway``
        from ``checkout`` (e.g. ``benches/profiled_gateway.py``, which older checkouts
        lack).
        """
        port = free_port()
        env = dict(os.environ)
        env.update({
            "COUCHDB_URL": upstream_admin_url,
            "WALLABY_HOST": "127.0.0.1",
            "WALLABY_PORT": str(port),
            "WALLABY_RATE_LIMIT_PER_SECOND": "0",
            "WALLABY_LOG_FORMAT": "json",
        })
        env.update(extra_env or {})
        log = open(ROOT / "var" / f"bench-gateway-{port}.log", "wb")  # noqa: SIM115
        if checkout != ROOT or script is not None:
            env["PYTHONPATH"] = str(checkout)
        command = [sys.executable, str(script)] if script else [sys.executable, "-m", module]
        process = subprocess.Popen([*command, "run"], cwd=checkout, env=env,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: raise_nofile(nofile))
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        return cls(process, port)

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_upstream(workdir: Path) -> EmbeddedCouch:
    """The embedded pouchdb-server, or nothing when ``COUCHDB_URL`` points elsewhere."""
    server = EmbeddedCouch(workdir / "couch", admin_password="bench-admin")
    server.start()
    return server
