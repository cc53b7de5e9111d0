"""Large JSON query answers: ``_all_docs?include_docs=true`` of a big database.

Usage: ``make bench-big-answers`` (or ``.venv/bin/python -m benches.big_answers --rounds 3``).

Builds a database of ``--docs`` documents of about ``--doc-bytes`` bytes each (with
``_bulk_docs``, in batches), so that ``_all_docs?include_docs=true`` answers about 40 MB
of JSON, and a CouchDB user allowed to read it (a member in ``_security``). Then reads
that answer, as that user, in ``--rounds`` rounds with the order rotated, from:

- **direct**: the upstream server (the baseline every ratio is against);
- **nginx**: a keep-alive reverse proxy, unbuffered, 1 MiB buffers (what a good
  conventional proxy achieves on the same machine);
- **gateway**: ``GET /api/v1/db/<db>/all_docs?include_docs=true``, default settings;
- **gateway (buffer 1 GB)**: a second gateway with ``WALLABY_BUFFER_ANSWER_BYTES``
  at 1 GB: every answer is read whole before it is sent (the behaviour before large
  answers were streamed);
- **gateway, gzip** and **gateway (buffer 1 GB), gzip**: the same two with
  ``Accept-Encoding: gzip``, as browsers send (the gateway may gzip-code the answer).

The client is a plain socket (``Connection: close``, ``recv_into`` 1 MiB at a time into
one buffer allocated beforehand): while timing it only looks for the end of the
headers. After timing it de-chunks, gunzips and parses the answer and checks it has one
row with its document per document, and the same JSON as direct's answer of the same
round. Reported per read: time to the answer's headers and to its first body byte, total
time, MiB/s of JSON delivered (decoded size ÷ total time) and its ratio to direct's in
the same round, bytes on the wire, the gateway's peak RSS growth during the read (VmRSS
sampled every 10 ms from ``/proc``), CPU seconds of the proxy, the upstream and this
client, and the CPU the machine spent on other processes meanwhile (``/proc/stat``: a
test run or a build in the way shows there). Loopback only; the run is bounded by
``--rounds`` times 6 reads of a few seconds (about 1.5 min with the defaults).
Results: ``benches/results/big_answers.json`` and a Markdown table on stdout.

pouchdb-server (the embedded upstream) computes the whole answer before it sends a byte,
on one core: its first byte is its last, within a few ms, and it is the bottleneck of
every target. A CouchDB that streams rows would show more of what streaming changes in
the time to the first byte.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benches.procs import (
    CLOCK_TICKS,
    ROOT,
    Gateway,
    Nginx,
    basic,
    children,
    couch_request,
    cpu_seconds,
    rss_bytes,
    start_upstream,
    stop_on_sigterm,
)
from benches.rest_proxy import RESULTS, machine
from benches.stream import RssSampler

DB = "big"
READER = ("bigreader", "big-reader-password")
QUERY = "include_docs=true"
READ = 1 << 20
#: What the second gateway is started with: buffer every answer whole up to 1 GB.
BUFFER_ALL = {"WALLABY_BUFFER_ANSWER_BYTES": "1000000000"}
GZIP = {"Accept-Encoding": "gzip"}

#: Every read goes, in a rotated order each round, to one of these.
TARGETS = ("direct", "nginx", "gateway", "gateway (buffer 1 GB)", "gateway, gzip",
           "gateway (buffer 1 GB), gzip")
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
          "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
          "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
          "list", "item", "done", "home", "work", "later", "urgent", "note", "café", "✓")


def make_docs(start: int, count: int, doc_bytes: int, rng: random.Random) -> list[dict[str, Any]]:
    """``count`` documents of about ``doc_bytes`` bytes of JSON each (words, numbers, a list)."""
    docs = []
    for i in range(start, start + count):
        words: list[str] = []
        size = 0
        while size < doc_bytes - 120:
            word = rng.choice(_WORDS)
            words.append(word)
            size += len(word) + 1
        docs.append({"_id": f"doc{i:07}", "type": "item", "n": i, "score": rng.random(),
                     "title": f"Item {i}: " + " ".join(rng.choices(_WORDS, k=4)),
                     "body": " ".join(words), "tags": rng.sample(_WORDS[:12], 3),
                     "done": i % 3 == 0})
    return docs


def build_database(url: str, auth: str, docs: int, doc_bytes: int, batch: int) -> float:
    """The database, its reader and its documents; returns the seconds it took."""
    started = time.monotonic()
    couch_request(url, "PUT", f"/{DB}", auth)
    name, password = READER
    couch_request(url, "PUT", f"/_users/org.couchdb.user:{name}", auth,
                  {"name": name, "password": password, "roles": [], "type": "user"})
    couch_request(url, "PUT", f"/{DB}/_security", auth, {
        "admins": {"names": [], "roles": []}, "members": {"names": [name], "roles": []}})
    rng = random.Random(6)  # the same documents every run
    for start in range(0, docs, batch):
        answer = couch_request(url, "POST", f"/{DB}/_bulk_docs", auth,
                               {"docs": make_docs(start, min(batch, docs - start), doc_bytes, rng)})
        assert isinstance(answer, list)
        failed = [row for row in answer if "error" in row]
        if failed:
            raise RuntimeError(f"_bulk_docs refused {len(failed)} documents: {failed[:3]}")
    info = couch_request(url, "GET", f"/{DB}", auth)
    assert isinstance(info, dict)
    if info.get("doc_count") != docs:
        raise RuntimeError(f"{DB} holds {info.get('doc_count')} documents, not {docs}")
    return time.monotonic() - started


class Reader:
    """Reads one HTTP answer over a plain socket into a buffer allocated once.

    Sends ``Connection: close`` so the end of the answer is the end of the stream: the
    timed loop does nothing but ``recv_into`` and, until they are found, look for the end
    of the headers. Framing, coding and JSON are dealt with after the clock stops.
    """

    def __init__(self, size: int, touch: bool = True) -> None:
        self.buffer = bytearray(size)
        if touch:  # fault every page in now, not while timing
            self.buffer[::4096] = bytes(len(range(0, size, 4096)))

    def get(self, port: int, path: str, headers: dict[str, str]) -> dict[str, Any]:
        """GET ``path``; times and the raw answer (``raw``: headers and body as sent)."""
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: application/json",
                 "Connection: close", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        request = "\r\n".join(lines).encode("latin-1")
        view = memoryview(self.buffer)
        size = len(self.buffer)
        got, header_end, error = 0, -1, None
        headers_s = first_byte_s = float("nan")
        with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            started = time.monotonic()
            try:
                sock.sendall(request)
                while got < size:
                    n = sock.recv_into(view[got:], min(READ, size - got))
                    if not n:
                        break
                    got += n
                    if header_end < 0:
                        header_end = self.buffer.find(b"\r\n\r\n", 0, got)
                        if header_end >= 0:
                            headers_s = time.monotonic() - started
                            header_end += 4
                    if header_end >= 0 and first_byte_s != first_byte_s and got > header_end:
                        first_byte_s = time.monotonic() - started
                else:
                    error = f"answer larger than the client's buffer ({size} bytes)"
            except OSError as exc:  # a reset or a timeout: reported, the run goes on
                error = f"{type(exc).__name__}: {exc}"
            seconds = time.monotonic() - started
        return {"seconds": seconds, "headers_s": headers_s, "first_byte_s": first_byte_s,
                "raw": bytes(view[:got]), "header_end": header_end, "error": error}


def dechunk(body: bytes) -> bytes:
    """The payload of a ``Transfer-Encoding: chunked`` body (trailers ignored)."""
    parts, pos = [], 0
    while True:
        end = body.index(b"\r\n", pos)
        length = int(body[pos:end].split(b";", 1)[0], 16)
        if length == 0:
            return b"".join(parts)
        parts.append(body[end + 2:end + 2 + length])
        if body[end + 2 + length:end + 4 + length] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        pos = end + 4 + length


def examine(read: dict[str, Any], docs: int) -> dict[str, Any]:
    """After the clock: status, framing, coding, JSON rows; and a digest of the JSON."""
    raw, header_end, error = read.pop("raw"), read.pop("header_end"), read.pop("error")
    if error or header_end < 0:
        return {"status": 0, "wire_bytes": len(raw), "complete": False,
                "problem": error or f"no headers in {len(raw)} bytes"}
    head = raw[:header_end].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    fields: dict[str, str] = {}
    for line in head[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip()
    body = raw[header_end:]
    result: dict[str, Any] = {
        "status": status, "wire_bytes": len(raw), "wire_body_bytes": len(body),
        "framing": ("chunked" if "chunked" in fields.get("transfer-encoding", "").lower()
                    else "length" if "content-length" in fields else "close"),
        "content_encoding": fields.get("content-encoding", ""),
        "etag": "etag" in fields, "complete": False}
    try:
        if result["framing"] == "chunked":
            body = dechunk(body)
        elif result["framing"] == "length" and len(body) != int(fields["content-length"]):
            raise ValueError(f"{len(body)} body bytes, Content-Length {fields['content-length']}")
        if result["content_encoding"] == "gzip":
            body = gzip.decompress(body)
        result["json_bytes"] = len(body)
        answer = json.loads(body)
        rows = answer["rows"]
        with_doc = sum(1 for row in rows if isinstance(row.get("doc"), dict)
                       and row["doc"].get("_id") == row["id"])
        result.update(rows=len(rows), total_rows=answer.get("total_rows"),
                      digest=hashlib.sha256(body).hexdigest()[:16])
        result["complete"] = (status == 200 and len(rows) == docs and with_doc == docs
                              and answer.get("total_rows") == docs)
        if not result["complete"]:
            result["problem"] = f"status {status}, {len(rows)} rows, {with_doc} with their doc"
    except (ValueError, KeyError, TypeError, OSError) as exc:
        result["problem"] = f"{type(exc).__name__}: {exc}"[:300]
    return result


def machine_busy() -> float:
    """CPU seconds every CPU of the machine has spent busy so far (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def self_cpu() -> float:
    """This process's CPU seconds so far (the client, and the RSS sampler)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def git(*command: str) -> str:
    """Output of a git command in the checkout ('' when git fails)."""
    return subprocess.run(["git", "-C", str(ROOT), *command], capture_output=True, text=True,
                          check=False).stdout.strip()


def main() -> None:
    """Build the database, read it every way in interleaved rounds; write JSON and a table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds; every target is read once per round, order rotated")
    parser.add_argument("--docs", type=int, default=14000, help="documents in the database")
    parser.add_argument("--doc-bytes", type=int, default=3000, help="JSON bytes per document")
    parser.add_argument("--batch", type=int, default=500, help="documents per _bulk_docs")
    parser.add_argument("--no-gzip", action="store_true", help="skip the two gzip targets")
    parser.add_argument("--output", default=str(RESULTS / "big_answers.json"))
    args = parser.parse_args()
    stop_on_sigterm()
    targets = [t for t in TARGETS if not (args.no_gzip and t.endswith("gzip"))]
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-big-", dir=ROOT / "var"))
    started, load_before = time.time(), os.getloadavg()
    commit, dirty = git("log", "-1", "--oneline"), git("status", "--porcelain", "gateway")
    upstream = start_upstream(workdir)
    admin = basic(upstream.admin_username, upstream.admin_password)
    reader_auth = basic(*READER)
    gateway = buffering = nginx = None
    try:
        build_s = build_database(upstream.url, admin, args.docs, args.doc_bytes, args.batch)
        print(f"built {args.docs} documents in {build_s:.1f} s", flush=True)
        assert upstream.process is not None
        upstream_pids = [upstream.process.pid, *children(upstream.process.pid)]
        gateway = Gateway.start(upstream.admin_url)
        buffering = Gateway.start(upstream.admin_url, BUFFER_ALL)
        nginx = Nginx.start(workdir / "nginx", upstream.port, buffer_size="1m")
        direct_path = f"/{DB}/_all_docs?{QUERY}"
        gateway_path = f"/api/v1/db/{DB}/all_docs?{QUERY}"
        ways: dict[str, tuple[int, str, dict[str, str], list[int]]] = {
            "direct": (upstream.port, direct_path, {}, []),
            "nginx": (nginx.port, direct_path, {}, nginx.pids()),
            "gateway": (gateway.port, gateway_path, {}, [gateway.process.pid]),
            "gateway (buffer 1 GB)": (buffering.port, gateway_path, {}, [buffering.process.pid]),
            "gateway, gzip": (gateway.port, gateway_path, GZIP, [gateway.process.pid]),
            "gateway (buffer 1 GB), gzip": (buffering.port, gateway_path, GZIP,
                                            [buffering.process.pid]),
        }
        # One untimed read sizes the client's buffer and warms the upstream's caches.
        probe = Reader(1 << 30, touch=False)
        first = examine(probe.get(upstream.port, direct_path, {"Authorization": reader_auth}),
                        args.docs)
        if not first["complete"]:
            raise RuntimeError(f"direct answer incomplete: {first}")
        del probe
        answer_bytes = first["wire_bytes"]
        print(f"answer: {answer_bytes / 2**20:.1f} MiB", flush=True)
        client = Reader(answer_bytes + answer_bytes // 2 + (1 << 20))
        for proxy in (gateway, buffering):  # each gateway's first read (its login), untimed
            client.get(proxy.port, gateway_path, {"Authorization": reader_auth})
        ours = [*upstream_pids, *nginx.pids(), gateway.process.pid, buffering.process.pid]
        runs: list[dict[str, Any]] = []
        for round_no in range(args.rounds):
            shift = round_no % len(targets)
            order = targets[shift:] + targets[:shift]
            direct_row: dict[str, Any] | None = None
            round_rows = []
            for target in order:
                port, path, extra, proxy_pids = ways[target]
                gw_pid = proxy_pids[0] if target.startswith("gateway") else None
                rss_before = rss_bytes(gw_pid) if gw_pid else 0
                sampler = RssSampler(gw_pid, interval=0.01) if gw_pid else None
                if sampler:
                    sampler.start()
                cpu0 = (cpu_seconds(proxy_pids), cpu_seconds(upstream_pids), self_cpu(),
                        cpu_seconds(ours), machine_busy())
                read = client.get(port, path, {"Authorization": reader_auth, **extra})
                cpu1 = (cpu_seconds(proxy_pids), cpu_seconds(upstream_pids), self_cpu(),
                        cpu_seconds(ours), machine_busy())
                peak = sampler.stop() if sampler else 0
                seconds = read["seconds"]
                row: dict[str, Any] = {
                    "round": round_no, "target": target, "seconds": seconds,
                    "headers_s": read["headers_s"], "first_byte_s": read["first_byte_s"],
                    "proxy_cpu_s": cpu1[0] - cpu0[0] if proxy_pids else None,
                    "upstream_cpu_s": cpu1[1] - cpu0[1],
                    "client_cpu_share": (cpu1[2] - cpu0[2]) / seconds,
                    # CPU the machine spent on anything but this benchmark's processes
                    # during the read: another process in the way (10 ms resolution).
                    "other_cpu_s": max(0.0, (cpu1[4] - cpu0[4]) - (cpu1[3] - cpu0[3])
                                       - (cpu1[2] - cpu0[2])),
                    "gateway_rss_before_mb": rss_before / 2**20 if gw_pid else None,
                    "gateway_peak_rss_growth_mb": (peak - rss_before) / 2**20 if gw_pid else None,
                    "gateway_rss_after_mb": rss_bytes(gw_pid) / 2**20 if gw_pid else None,
                }
                row.update(examine(read, args.docs))
                row["mib_per_s"] = row.get("json_bytes", 0) / 2**20 / seconds
                if target == "direct":
                    direct_row = row
                round_rows.append(row)
            assert direct_row is not None
            for row in round_rows:
                row["ratio_to_direct"] = (row["mib_per_s"] / direct_row["mib_per_s"]
                                          if direct_row["mib_per_s"] else float("nan"))
                row["same_json_as_direct"] = (row.get("digest") is not None
                                               and row.get("digest") == direct_row.get("digest"))
                runs.append(row)
                print(json.dumps(row), flush=True)
        summary = summarize(runs, targets)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "big_answers", "started": started, "gateway_commit": commit,
            "gateway_uncommitted": dirty.splitlines(), "docs": args.docs,
            "doc_bytes": args.doc_bytes, "answer_bytes": first["json_bytes"],
            "build_s": build_s, "rounds": args.rounds, "buffer_all_env": BUFFER_ALL,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "machine": machine(), "summary": summary, "runs": runs}, indent=2))
        print(f"\n{args.docs} documents, answer {first['json_bytes'] / 2**20:.1f} MiB of JSON; "
              f"gateway at {commit}{' (uncommitted changes in gateway/)' if dirty else ''}")
        print(markdown(runs, summary))
    finally:
        for proxy in (gateway, buffering):
            if proxy:
                proxy.stop()
        if nginx:
            nginx.stop()
        upstream.stop()


def summarize(runs: list[dict[str, Any]], targets: list[str]) -> list[dict[str, Any]]:
    """Medians over rounds per target (worst RSS growth, every read's completeness)."""
    summary = []
    for target in targets:
        rows = [r for r in runs if r["target"] == target]

        def median(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None and r[key] == r[key]]
            return statistics.median(values) if values else None

        growth = [r["gateway_peak_rss_growth_mb"] for r in rows
                  if r["gateway_peak_rss_growth_mb"] is not None]
        summary.append({
            "target": target, "reads": len(rows),
            **{key: median(key) for key in ("headers_s", "first_byte_s", "seconds", "mib_per_s",
                                            "ratio_to_direct", "proxy_cpu_s", "upstream_cpu_s",
                                            "client_cpu_share", "other_cpu_s", "wire_bytes")},
            "gateway_peak_rss_growth_mb_max": max(growth) if growth else None,
            "framing": sorted({r.get("framing", "?") for r in rows}),
            "content_encoding": sorted({r.get("content_encoding", "") for r in rows}),
            "all_complete": all(r["complete"] for r in rows),
            "all_same_json_as_direct": all(r["same_json_as_direct"] for r in rows),
        })
    return summary


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def markdown(runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    """Every read, then the medians per target."""
    lines = ["| round | target | headers s | first byte s | total s | MiB/s | ÷ direct | "
             "wire MiB | framing | gateway peak RSS growth MiB | proxy CPU s | upstream CPU s | "
             "client CPU | other CPU s | complete |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        coding = f", {r['content_encoding']}" if r.get("content_encoding") else ""
        lines.append(
            f"| {r['round']} | {r['target']} | {_num(r['headers_s'], '.3f')} | "
            f"{_num(r['first_byte_s'], '.3f')} | {r['seconds']:.3f} | {r['mib_per_s']:.1f} | "
            f"{r['ratio_to_direct']:.2f} | {_num(r.get('wire_bytes', 0) / 2**20, '.1f')} | "
            f"{r.get('framing', '?')}{coding} | {_num(r['gateway_peak_rss_growth_mb'], '.1f')} | "
            f"{_num(r['proxy_cpu_s'], '.2f')} | {r['upstream_cpu_s']:.2f} | "
            f"{r['client_cpu_share']:.0%} | {r['other_cpu_s']:.2f} | "
            f"{'yes' if r['complete'] else 'NO: ' + r.get('problem', '?')}"
            f"{'' if r['same_json_as_direct'] or not r['complete'] else ' (JSON differs)'} |")
    lines += ["", "| target (median of rounds) | headers s | first byte s | total s | MiB/s | "
              "÷ direct | gateway peak RSS growth MiB (max) | proxy CPU s | all complete |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['target']} | {_num(s['headers_s'], '.3f')} | {_num(s['first_byte_s'], '.3f')} | "
            f"{_num(s['seconds'], '.3f')} | {_num(s['mib_per_s'], '.1f')} | "
            f"{_num(s['ratio_to_direct'], '.2f')} | "
            f"{_num(s['gateway_peak_rss_growth_mb_max'], '.1f')} | "
            f"{_num(s['proxy_cpu_s'], '.2f')} | {s['all_complete']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
