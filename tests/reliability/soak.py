"""Mixed REST + WebSocket soak against a real ``python -m gateway run`` process.

Usage (also ``make soak``; ``SOAK_SECONDS`` sets the duration)::

    python -m tests.reliability.soak --duration 600 [--rest-workers 8] [--ws-clients 20]

Without ``COUCHDB_URL`` (admin credentials in it) an embedded pouchdb-server is started in
a temporary folder. For the given duration, REST workers (as a database member) create,
read, list, query and miss documents, read their session and ``/health``; browser-style
WebSocket clients stay subscribed to the database, drop their socket every few seconds and
resume from their last seq (logging in again once their token, a CouchDB session, has
expired: after 10 minutes by default). Every REST answer is checked against the status expected for
its operation (anything else is an *unexpected error*); every client must end with every
document written after it first subscribed, none twice (*changes lost* must be 0).

Every ``--sample-every`` seconds the gateway's RSS, open fds and TCP connections are
sampled; the report gives RSS over time, its least-squares slope after warm-up, and fds /
client connections / upstream connections / WebSocket gauges before the load and after
every client has left. The summary is printed, written to ``var/reliability/soak-*.json``
and appended to ``var/reliability/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, task
from twisted.web.client import Agent, HTTPConnectionPool

from tests.reliability.conftest import (
    RESULTS,
    ROOT,
    Couch,
    GatewayProcess,
    basic_header,
    http,
    record,
    spawn_gateway,
)
from tests.reliability.wsclient import ResumingClient
from tests.ws.conftest import sleep


@dataclass
class SoakConfig:
    duration: float = 600.0
    rest_workers: int = 8
    ws_clients: int = 20
    churn_seconds: float = 5.0      # mean time between a client's socket drops
    sample_every: float = 5.0
    warmup_fraction: float = 0.2
    settle_seconds: float = 15.0    # how long leaks may take to disappear after clients leave


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    client_conns: int
    upstream_conns: int


@dataclass
class SoakState:
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    written: list[tuple[float, str]] = field(default_factory=list)  # (issued at, id)
    requests: int = 0
    stop: bool = False


EXPECTED = {
    "put": {201}, "get": {200}, "all_docs": {200}, "find": {200}, "missing": {404},
    "session": {200}, "health": {200}, "bad_id": {400}, "forbidden_db": {403},
}


def _near(resume: str, seq: str) -> bool:
    """A resume point within 5 of a missing seq (integer seqs, e.g. pouchdb-server)."""
    try:
        return abs(int(resume.split("-")[0]) - int(seq.split("-")[0])) <= 5
    except ValueError:
        return False


def slope_kib_per_min(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time."""
    if len(samples) < 3:
        return 0.0
    xs = [s.t for s in samples]
    ys = [s.rss_kib for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 60.0


def sample(gateway: GatewayProcess, couch_port: int, started: float) -> Sample:
    conns = gateway.ps.net_connections(kind="tcp")
    client = sum(1 for c in conns if c.laddr and c.laddr.port == gateway.port and c.raddr)
    upstream = sum(1 for c in conns if c.raddr and c.raddr.port == couch_port)
    return Sample(round(time.monotonic() - started, 1), gateway.rss_kib(), gateway.fds(),
                  client, upstream)


def ws_gauges(gateway: GatewayProcess) -> dict[str, float]:
    text = http("GET", gateway.url + "/metrics", timeout=10).body.decode()
    gauges = {}
    for line in text.splitlines():
        for name in ("ws_connections", "ws_subscriptions", "ws_upstream_feeds",
                     "http_requests_in_flight", "gc_frozen_objects", "gc_freezes_total",
                     "gc_thaws_total"):
            if line.startswith(f"wallaby_{name} "):
                gauges[name] = float(line.split()[1])
    return gauges


async def rest_worker(reactor: Any, n: int, agent: Agent, base: str, db: str,
                      headers: dict[str, str], state: SoakState) -> None:
    h = {k: [v] for k, v in headers.items()}
    mine: list[str] = []
    i = 0
    while not state.stop:
        i += 1
        doc_id = f"w{n}-{i}-{uuid.uuid4().hex[:6]}"
        ops: list[tuple[str, str, str, Any]] = [
            ("put", "PUT", f"/api/v1/db/{db}/docs/{doc_id}", {"n": i, "worker": n, "pad": "x" * 200}),
            ("get", "GET", f"/api/v1/db/{db}/docs/{random.choice(mine) if mine else doc_id}", None),
            ("all_docs", "GET", f"/api/v1/db/{db}/all_docs?limit=5", None),
            ("find", "POST", f"/api/v1/db/{db}/find", {"selector": {"worker": n}, "limit": 3}),
            ("missing", "GET", f"/api/v1/db/{db}/docs/missing-{i}", None),
            ("session", "GET", "/api/v1/session", None),
            ("health", "GET", "/health", None),
            ("bad_id", "GET", f"/api/v1/db/{db}/docs/_bad", None),
            ("forbidden_db", "GET", "/api/v1/db/_users", None),
        ]
        for label, method, path, body in ops:
            if state.stop:
                return
            issued = time.monotonic()
            try:
                if body is None:
                    response = await treq.request(method, base + path, headers=h, agent=agent,
                                                  timeout=30)
                else:
                    response = await treq.request(method, base + path, json=body, headers=h,
                                                  agent=agent, timeout=30)
                content = await response.content()
                status = response.code
            except Exception as exc:
                state.unexpected.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            state.requests += 1
            state.statuses[f"{label} {status}"] += 1
            if status not in EXPECTED[label]:
                state.unexpected.append(f"{label} {path} -> {status} {content[:150]!r}")
            elif label == "put":
                state.written.append((issued, doc_id))
                mine.append(doc_id)
                if len(mine) > 50:
                    mine.pop(0)
        await sleep(reactor, random.uniform(0.0, 0.02))


async def churn(reactor: Any, clients: list[ResumingClient], config: SoakConfig,
                state: SoakState) -> int:
    drops = 0
    while not state.stop:
        await sleep(reactor, config.churn_seconds / max(1, len(clients)))
        client = random.choice(clients)
        proto = client.protocol
        if proto is not None and not proto.closed.called:
            proto.dropConnection(abort=random.random() < 0.5)
            drops += 1
    return drops


async def run_soak(reactor: Any, gateway: GatewayProcess, couch: Couch, config: SoakConfig,
                   log: Any = None) -> dict[str, Any]:
    """Run the load against ``gateway``; return the summary (see module docs)."""
    log = log or (lambda *_: None)
    couch_port = int(couch.backend.url.rsplit(":", 1)[1])
    user, password = couch.new_user()
    db = couch.new_db(members=[user])
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = config.rest_workers + 2
    agent = Agent(reactor, pool=pool)
    state = SoakState()
    started = time.monotonic()
    try:
        login = http("POST", gateway.url + "/api/v1/session", {"name": user, "password": password})
        assert login.status == 200, login
        token = login.json["token"]
        await sleep(reactor, 0.5)
        before = sample(gateway, couch_port, started)
        gauges_before = ws_gauges(gateway)
        samples = [before]
        # a concrete starting seq (fresh, empty database): see wsclient's docs
        async def log_in_again() -> str:
            # Past CouchDB's session timeout (10 min by default) a reconnect with the old
            # token is refused 401: the app logs in again and resumes, as wallaby.js users do.
            answer = await treq.post(gateway.url + "/api/v1/session", agent=agent,
                                     json={"name": user, "password": password}, timeout=30)
            body = await answer.json()
            if answer.code != 200:
                raise AssertionError(f"login again: {answer.code} {body}")
            return str(body["token"])

        clients = [ResumingClient(reactor, gateway.port, token, db, name=f"ws{i}", last_seq=0,
                                  renew=log_in_again)
                   for i in range(config.ws_clients)]
        for client in clients:
            await client.connect()
        subscribed_at = time.monotonic()
        running = [defer.ensureDeferred(c.run()) for c in clients]
        workers = [defer.ensureDeferred(rest_worker(reactor, n, agent, gateway.url, db,
                                                    basic_header(user, password), state))
                   for n in range(config.rest_workers)]
        churner = defer.ensureDeferred(churn(reactor, clients, config, state))
        end = started + config.duration
        while time.monotonic() < end:
            await sleep(reactor, min(config.sample_every, max(0.1, end - time.monotonic())))
            samples.append(sample(gateway, couch_port, started))
            last = samples[-1]
            log(f"t={last.t:6.1f}s rss={last.rss_kib / 1024:6.1f} MiB fds={last.fds} "
                f"client_conns={last.client_conns} upstream={last.upstream_conns} "
                f"requests={state.requests} unexpected={len(state.unexpected)}")
        state.stop = True
        await defer.DeferredList(workers, consumeErrors=True)
        drops = await churner
        await pool.closeCachedConnections()
        # every client must have every document written after it first subscribed
        expected = {doc_id for issued, doc_id in state.written if issued >= subscribed_at}
        catch_up_started = time.monotonic()
        while time.monotonic() < catch_up_started + 90:
            if all(set(c.ids()) >= expected for c in clients):
                break
            await sleep(reactor, 0.2)
        catch_up_s = round(time.monotonic() - catch_up_started, 1)
        for client in clients:
            client.stopped = True
        await defer.DeferredList(running, consumeErrors=True)
        lost = duplicates = 0
        lost_detail: dict[str, Any] = {}
        seq_of = {}
        for client in clients:
            ids = client.ids()
            missing = expected - set(ids)
            if missing and not seq_of:
                seq_of = {row["id"]: row["seq"] for row in couch.changes(db)}
            if missing:
                seqs = sorted(str(seq_of.get(i)) for i in missing)
                resumes = [str(r) for r in client.resumes]
                lost_detail[client.name] = {
                    "missing": sorted(missing)[:10], "connects": client.connects,
                    "last_seq": str(client.last_seq)[:40], "missing_seqs": seqs[:10],
                    "resumed_from": [r for r in resumes if any(
                        _near(r, m) for m in seqs)][:10],
                    "missing_written_at_s": sorted(round(t - started, 1) for t, i in state.written
                                                   if i in missing)[:10],
                }
            lost += len(missing)
            duplicates += len(ids) - len(set(ids))
            state.unexpected += [f"{client.name}: {e}" for e in client.errors]
        for client in clients:
            await client.stop()
        # after every client has left: fds and connections back to the baseline
        settle_end = time.monotonic() + config.settle_seconds
        after = sample(gateway, couch_port, started)
        gauges_after = ws_gauges(gateway)
        while time.monotonic() < settle_end:
            after = sample(gateway, couch_port, started)
            gauges_after = ws_gauges(gateway)
            if (after.client_conns <= 1 and after.fds - after.upstream_conns
                    <= before.fds - before.upstream_conns + 2
                    and not gauges_after.get("ws_connections")):
                break
            await sleep(reactor, 0.5)
        warm = [s for s in samples if s.t >= config.duration * config.warmup_fraction]
        summary = {
            "duration_s": config.duration, "rest_workers": config.rest_workers,
            "ws_clients": config.ws_clients, "requests": state.requests,
            "requests_per_s": round(state.requests / config.duration, 1),
            "unexpected_errors": len(state.unexpected),
            "unexpected_sample": state.unexpected[:10],
            "docs_written": len(state.written), "ws_socket_drops_and_resumes": drops,
            "ws_reconnects": sum(c.connects - 1 for c in clients),
            "ws_logins_again": sum(c.renewals for c in clients),
            "changes_expected_per_client": len(expected),
            "changes_lost": lost, "duplicates": duplicates, "lost_detail": lost_detail,
            "catch_up_after_load_s": catch_up_s,
            "rss_mib_start": round(before.rss_kib / 1024, 1),
            "rss_mib_after_warmup": round(warm[0].rss_kib / 1024, 1) if warm else None,
            "rss_mib_peak": round(max(s.rss_kib for s in samples) / 1024, 1),
            "rss_mib_end": round(samples[-1].rss_kib / 1024, 1),
            "rss_slope_kib_per_min_after_warmup": round(slope_kib_per_min(warm), 1),
            "fds_before": before.fds, "fds_after": after.fds,
            "upstream_conns_before": before.upstream_conns,
            "upstream_conns_after": after.upstream_conns,
            "client_conns_after": after.client_conns,
            "non_upstream_fds_before": before.fds - before.upstream_conns,
            "non_upstream_fds_after": after.fds - after.upstream_conns,
            "ws_gauges_before": gauges_before, "ws_gauges_after": gauges_after,
            "statuses": dict(sorted(state.statuses.items())),
            "rss_series": [(s.t, round(s.rss_kib / 1024, 1)) for s in samples],
            "fd_series": [(s.t, s.fds) for s in samples],
        }
        return summary
    finally:
        state.stop = True
        couch.delete_db(db)


def _main(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    async def go() -> None:
        from gateway.couch.urls import split_credentials
        from gateway.embedded import EmbeddedCouch
        from tests.conftest import CouchBackend

        embedded = None
        external = os.environ.get("COUCHDB_URL")
        if external:
            url, user, password = split_credentials(external)
            backend = CouchBackend(url, user or "", password or "")
        else:
            data = Path(tempfile.mkdtemp(prefix="soak-couch-"))
            embedded = EmbeddedCouch(data_dir=data, admin_username="admin",
                                     admin_password=uuid.uuid4().hex)
            embedded.start()
            backend = CouchBackend(embedded.url, "admin", embedded.admin_password, embedded,
                                   "pouchdb")
        logdir = Path(tempfile.mkdtemp(prefix="soak-gateway-"))
        gateway = spawn_gateway(backend.admin_url, logdir, WALLABY_FEED_HEARTBEAT_MS="2000")
        try:
            config = SoakConfig(duration=args.duration, rest_workers=args.rest_workers,
                                ws_clients=args.ws_clients, sample_every=args.sample_every,
                                churn_seconds=args.churn_seconds)
            summary = await run_soak(reactor, gateway, Couch(backend), config,
                                     log=lambda line: print(line, flush=True))
        finally:
            gateway.stop()
            if embedded is not None:
                embedded.stop()
        passed = (summary["unexpected_errors"] == 0 and summary["changes_lost"] == 0
                  and summary["duplicates"] == 0 and summary["client_conns_after"] <= 1
                  and summary["non_upstream_fds_after"] <= summary["non_upstream_fds_before"] + 2)
        summary["passed"] = passed
        out = RESULTS.parent / f"soak-{time.strftime('%Y%m%dT%H%M%S')}.json"
        out.write_text(json.dumps(summary, indent=2))
        record("soak", f"soak_{int(args.duration)}s", **{k: v for k, v in summary.items()
                                                         if k not in ("rss_series", "fd_series",
                                                                      "statuses")})
        print(json.dumps({k: v for k, v in summary.items() if k not in ("rss_series", "fd_series")},
                         indent=2))
        print("RSS over time (s, MiB):", summary["rss_series"])
        print(f"report: {out.relative_to(ROOT)}  gateway logs: {logdir}")
        if not passed:
            raise SystemExit(1)

    return defer.ensureDeferred(go())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float,
                        default=float(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--rest-workers", type=int, default=8)
    parser.add_argument("--ws-clients", type=int, default=20)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--churn-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    task.react(_main, [args])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
