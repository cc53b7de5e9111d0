"""Entry point: ``python -m gateway run``.

The only module that imports the global reactor. Until the HTTP gateway lands this
starts the embedded CouchDB-compatible server (unless ``COUCHDB_URL`` is set) and
prints how to reach it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from gateway.embedded import EmbeddedCouch


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="wallaby-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the service")
    run.add_argument("--data-dir", default=os.environ.get("WALLABY_DATA_DIR", "var/couch"),
                     help="data folder of the embedded server (default: var/couch)")
    run.add_argument("--couch-port", type=int,
                     default=int(os.environ.get("WALLABY_EMBEDDED_PORT", "5984")))
    args = parser.parse_args(argv)

    if os.environ.get("COUCHDB_URL"):
        print(f"Using CouchDB at {os.environ['COUCHDB_URL'].split('@')[-1]}")
        return 0
    password = os.environ.get("WALLABY_EMBEDDED_ADMIN_PASSWORD", "admin")
    server = EmbeddedCouch(Path(args.data_dir), port=args.couch_port, admin_password=password)
    server.start()
    print(f"Embedded CouchDB-compatible server: {server.url}  (admin / {password})")
    print("Press Ctrl-C to stop.")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
