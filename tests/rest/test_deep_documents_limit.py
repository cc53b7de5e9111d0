"""Documents nested up to gateway/deep_json.py's limit, on the Python this runs and the image's.

(pouchdb-server itself stores at most about 4,000 levels (Node's stack: 502
"RangeError: Maximum call stack size exceeded" at 5,000), so the REST tests stop at
3,000; the deep_json test below goes to MAX_DEPTH.)

docs/rest-api.md and gateway/deep_json.py: the gateway reads and writes JSON nested up
to MAX_DEPTH (10,000) levels and refuses deeper values naming the limit (400 for a body,
502 too_deep for an answer). The existing tests use 1,200 levels only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.deep_json import MAX_DEPTH
from tests.rest.conftest import Scenario

ROOT = Path(__file__).resolve().parents[2]


def _deep_body(depth: int) -> bytes:
    """A document nested ``depth`` levels in all (the document object is level 1)."""
    inner = depth - 1
    return b'{"v":' + b"[" * inner + b"]" * inner + b"}"


@pytest.mark.parametrize("depth", [2_000, 3_000])
async def test_a_document_nested_within_the_limit_is_written_and_read(
    scenario: Scenario, depth: int
) -> None:
    db = scenario.db.name
    put = await scenario.admin.put(f"/api/v1/db/{db}/docs/deep{depth}", data=_deep_body(depth),
                                   headers={"Content-Type": "application/json"})
    assert put.status == 201, (
        f"{depth} levels (limit {MAX_DEPTH}) on {sys.version.split()[0]}: "
        f"{put.status} {put.body[:200]!r}")
    got = await scenario.admin.get(f"/api/v1/db/{db}/docs/deep{depth}")
    assert got.status == 200, (
        f"{depth} levels (limit {MAX_DEPTH}) read on {sys.version.split()[0]}: "
        f"{got.status} {got.body[:200]!r}")
    listed = await scenario.admin.get(f"/api/v1/db/{db}/all_docs?include_docs=true")
    assert listed.status == 200, (listed.status, listed.body[:200])


def _dockerfile_python() -> str:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("ARG PYTHON_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("no PYTHON_VERSION in the Dockerfile")


def test_deep_json_reaches_its_limit_on_the_python_the_image_ships() -> None:
    """The Docker image runs Python 3.12 (Dockerfile: ARG PYTHON_VERSION=3.12), whose
    C recursion limit (about 1,500 levels) does not move with sys.setrecursionlimit:
    deep_json.loads raises a bare RecursionError from its retry, which no caller
    catches (the 500 + stalled include_docs feed that fccbf5c set out to fix)."""
    version = _dockerfile_python()
    candidates = [*sorted(str(p) for p in Path("/root/.pyenv/versions").glob(f"{version}*/bin/python3")),
                  shutil.which(f"python{version}")]
    python = next((c for c in candidates
                   if c and "/shims/" not in c and os.access(c, os.X_OK)), None)
    if python is None:
        pytest.skip(f"no Python {version} here")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from gateway import deep_json\n"
        "for depth in (2000, 5000, deep_json.MAX_DEPTH):\n"
        "    text = '[' * depth + ']' * depth\n"
        "    try:\n"
        "        deep_json.dumps(deep_json.loads(text))\n"
        "        print(depth, 'ok')\n"
        "    except Exception as exc:\n"
        "        print(depth, type(exc).__name__, exc)\n"
    )
    out = subprocess.run([python, "-c", code, str(ROOT)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": ""})
    lines = out.stdout.strip().splitlines()
    assert lines and all(line.endswith(" ok") for line in lines), (
        f"gateway/deep_json.py on Python {version} ({python}): {lines or out.stderr[-500:]}")
