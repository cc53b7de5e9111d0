"""AcceptErrorSummary (gateway/accept_errors.py, session 20): the summary of connections
refused for lack of descriptors must account for them, not only for the first of a burst.

The observer writes a summary only when a refused connection arrives and the last summary
is older than the interval (10 s); there is no timer. A burst of refused connections
shorter than the interval is reported as "1 EMFILE" and the rest are never reported
(until, perhaps hours later, another refusal comes, reported "in the last <hours> s").
The commit's own test asks for "a bounded, aggregated warning (e.g. one line per interval
with a count)"; the docstring promises "how many connections were refused".
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import GatewayProcess
from tests.reliability.test_descriptor_exhaustion import NOFILE, _exhaust, _spawn


def test_a_burst_of_refused_connections_is_counted_in_the_log(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    gateway = _spawn(couch_backend, tmp_path, nofile=NOFILE)
    gateways.append(gateway)
    held = _exhaust(gateway, NOFILE)
    attempts = 300
    try:
        time.sleep(0.5)
        for _ in range(attempts):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
            sock.close()
        time.sleep(1.0)
    finally:
        for sock in held:
            sock.close()
    # the burst is over; more than one interval (10 s) passes
    time.sleep(12)
    summaries = []
    for line in gateway.logs().splitlines():
        if "could not accept connections" in line:
            summaries.append(json.loads(line)["message"])
    reported = 0
    for message in summaries:
        reasons = message.split(": ", 1)[1].split(" (EMFILE", 1)[0]
        reported += sum(int(part.split()[0]) for part in reasons.split(", "))
    # the idle connections of _exhaust beyond the limit were refused too: at least `attempts`
    assert reported >= attempts, (
        f"{attempts}+ connections refused, the log accounts for {reported}: {summaries}")
