"""``python -m gateway run`` as a child process, for tests of the real entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(r"^READY (\d+)$", re.MULTILINE)


@dataclass
class GatewayProcess:
    """A running gateway process; its stderr (and maybe stdout) goes to ``log``."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within ``grace`` seconds."""
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def access_lines(self) -> list[dict[str, Any]]:
        """The JSON access lines logged so far (``WALLABY_LOG_FORMAT=json``, on ``log``)."""
        lines = []
        for line in self.output().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") == "access":
                lines.append(event)
        return lines

    def rss_kib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field}")


async def spawn_gateway(
    reactor: Any, env: Mapping[str, str], log: Path, *, stdout: Path | None = None,
    args: Sequence[str] = (), timeout: float = 30.0, cwd: Path = ROOT,
) -> GatewayProcess:
    """Start the entry point and wait for its ``READY <port>`` line on stderr.

    Args:
        reactor: The test reactor (the wait does not block it).
        env: The whole environment of the child.
        log: Where stderr goes (and stdout, unless ``stdout`` is given).
        stdout: A separate file for stdout (appended to).
        args: Extra arguments after ``run``.
        timeout: Seconds to wait for ``READY``.
        cwd: The child's working folder (the checkout by default).
    """
    with log.open("wb") as err, (stdout.open("ab") if stdout else nullcontext(err)) as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
            [sys.executable, "-m", "gateway", "run", *args], cwd=cwd, env=dict(env),
            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
    deadline = reactor.seconds() + timeout
    while True:
        text = log.read_text(errors="replace")  # noqa: ASYNC240 - a small local log
        ready = _READY.search(text)
        if ready:
            return GatewayProcess(process, int(ready.group(1)), log)
        if process.poll() is not None or reactor.seconds() > deadline:
            process.kill()
            raise AssertionError(f"gateway did not start:\n{text}")
        await deferLater(reactor, 0.05, lambda: None)
