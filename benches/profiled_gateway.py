"""``python -m gateway run`` with Python's call counter switched on and off by signals.

Run by path (``python benches/profiled_gateway.py run``) with ``PYTHONPATH`` naming the
checkout whose gateway to count, so that it works for older checkouts too (see
:mod:`benches.call_counts`). ``SIGUSR1`` starts counting; ``SIGUSR2`` stops and writes
the ``cProfile`` statistics to the file named by ``BENCH_PROFILE_OUT`` (written under
another name, then renamed: the file appears complete or not at all).
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from types import FrameType


def main() -> int:
    """Install the two signal handlers and run the gateway's command line."""
    profile = cProfile.Profile()
    out = os.environ["BENCH_PROFILE_OUT"]

    def start(_signum: int, _frame: FrameType | None) -> None:
        profile.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profile.disable()
        profile.dump_stats(out + ".part")
        os.replace(out + ".part", out)
        profile.clear()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from gateway.__main__ import main as gateway_main  # after PYTHONPATH chose the checkout

    return gateway_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
