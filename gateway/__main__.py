"""Entry point: ``python -m gateway run``.

The only module that imports the global reactor. Without ``COUCHDB_URL`` (or
``--couchdb-url``) it starts the embedded CouchDB-compatible server (pouchdb-server,
data in ``WALLABY_EMBEDDED_DATA_DIR``, port 5984 unless busy), creates a demo user
``demo``/``demo`` and a demo database ``demo`` that user may use, then serves the
gateway: the REST API, and live changes over WebSocket at ``/api/v1/changes``.

SIGTERM, Ctrl-C or SIGHUP first closes every WebSocket (a ``closing`` message with the resume
seqs, then close code 1001) and the upstream ``_changes`` feeds, then stops accepting
HTTP connections, lets in-flight requests finish within ``WALLABY_SHUTDOWN_GRACE``
seconds, and stops the embedded server.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet._sslverify import IOpenSSLTrustRoot

from gateway.accept_errors import AcceptErrorSummary
from gateway.config import Settings, parse_whole_number
from gateway.couch.tls import load_trust_root
from gateway.couch.urls import split_credentials
from gateway.embedded import EmbeddedCouch, free_port
from gateway.schemas import api_schema_dir
from gateway.stdlib_logging import route_stdlib_logging

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"  # noqa: S105 - the documented local demo account
DEMO_DB = "demo"


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``port``, as Node's does (with ``SO_REUSEADDR``).

    The connections of a server that just stopped leave TIME-WAIT sockets on its port
    for a minute; they keep a plain ``bind`` out, not a listener like Node's.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError:
            return False
        return True


def _call(url: str, method: str, path: str, auth: tuple[str, str], body: Any = None) -> int:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - loopback embedded server only
        url + path, data=data, method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def provision_demo(url: str, admin: tuple[str, str]) -> None:
    """Create the demo user and database (idempotent)."""
    _call(url, "PUT", f"/_users/org.couchdb.user:{DEMO_USER}", admin,
          {"_id": f"org.couchdb.user:{DEMO_USER}", "name": DEMO_USER, "type": "user",
           "roles": [], "password": DEMO_PASSWORD})
    _call(url, "PUT", f"/{DEMO_DB}", admin)
    _call(url, "PUT", f"/{DEMO_DB}/_security", admin,
          {"admins": {"names": [], "roles": []},
           "members": {"names": [DEMO_USER], "roles": []}})


def _embedded_port(raw: str) -> int:
    """``--couch-port``: a TCP port (0: the default), read as settings' whole numbers are."""
    try:
        port = parse_whole_number(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0 to 65535)")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wallaby-gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the gateway")
    # Setting flags stay text here: settings_from reads them as the variables are read.
    run.add_argument("--host", help="listen address (WALLABY_HOST, default 127.0.0.1)")
    run.add_argument("--port", help="listen port (WALLABY_PORT, default 8080)")
    run.add_argument("--couchdb-url", help="upstream CouchDB (COUCHDB_URL); embedded if unset")
    run.add_argument("--cors-origins", help="comma-separated allowed origins")
    run.add_argument("--allow-anonymous", action="store_true", default=None,
                     help="let requests without credentials through")
    run.add_argument("--auth-mode", metavar="{forward,proxy,jwt}")
    run.add_argument("--request-timeout", help="upstream timeout in seconds")
    run.add_argument("--max-body-bytes")
    run.add_argument("--max-attachment-bytes")
    run.add_argument("--log-format", metavar="{json,text}")
    run.add_argument("--data-dir", help="data folder of the embedded server")
    run.add_argument("--couch-port", type=_embedded_port,
                     help="port of the embedded server (default 5984, or a free one)")
    return parser


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Environment settings overridden by CLI flags, each read as its variable is."""
    settings = Settings.from_env(environ)
    flags = dict(
        host=args.host, port=args.port, couchdb_url=args.couchdb_url,
        cors_origins=args.cors_origins or None, allow_anonymous=args.allow_anonymous,
        auth_mode=args.auth_mode, request_timeout=args.request_timeout,
        max_body_bytes=args.max_body_bytes, max_attachment_bytes=args.max_attachment_bytes,
        log_format=args.log_format, embedded_data_dir=args.data_dir,
    )
    try:
        overrides = {field: Settings.parse(field, value) if isinstance(value, str) else value
                     for field, value in flags.items()}
        return settings.with_overrides(**overrides)
    except ValueError as exc:
        # Settings name the variable; the value came from a flag here.
        message = str(exc)
        for field, value in flags.items():
            variable = Settings.env_name(field)
            if value is not None and message.startswith(variable + ":"):
                flag = "--" + _FLAGS.get(field, field).replace("_", "-")
                message = f"{flag} (or {variable}){message[len(variable):]}"
        raise ValueError(message) from None


_FLAGS = {"embedded_data_dir": "data_dir"}


def _stop_once_on_signals(reactor: Any) -> None:
    """SIGTERM, SIGINT and SIGHUP stop the reactor; once it is stopping, they change nothing.

    Twisted's own handlers call ``reactor.stop()`` again, which raises while the
    shutdown (the drain, the WebSockets' close, the grace) runs: a critical traceback
    for an operator's second Ctrl-C or a supervisor repeating SIGTERM. SIGHUP (a closed
    terminal or ssh session) has no handler of Twisted's: by default it kills the
    process at once, cutting every WebSocket without its ``closing`` message.
    """
    from twisted.internet.error import ReactorNotRunning
    from twisted.logger import Logger

    log = Logger(namespace="gateway")

    def stop(signum: int) -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            log.info("already stopping: waiting for the drain and in-flight requests")
        else:
            log.info("{signal}: shutting down", signal=signal.Signals(signum).name)

    def on_signal(signum: int, frame: object) -> None:
        reactor.callFromThread(stop, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)


def _raise_descriptor_limit() -> None:
    """Raise the soft limit of open files to the hard one (as Go programs do).

    Every WebSocket holds a descriptor; a soft limit of 1024 (a common default) would
    refuse connections past about a thousand, while the hard limit allows more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # Linux's nr_open
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _trust_root(settings: Settings) -> IOpenSSLTrustRoot | None:
    """The CA certificates of ``WALLABY_COUCHDB_CA_FILE`` (``None``: the system's)."""
    if not settings.couchdb_ca_file:
        return None
    try:
        return load_trust_root(settings.couchdb_ca_file)
    except ValueError as exc:
        raise ValueError(f"{Settings.env_name('couchdb_ca_file')}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Start (embedded CouchDB and) the gateway; return when stopped."""
    try:
        api_schema_dir()  # gateway.http.app loads the contract on import
    except FileNotFoundError as exc:
        sys.stderr.write(f"wallaby: {exc}\n")
        return 2
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    from twisted.internet.defer import Deferred
    from twisted.logger import Logger, globalLogBeginner, globalLogPublisher, textFileLogObserver

    from gateway.couch import BasicAuth, CouchServer
    from gateway.couch.pool import connection_pool
    from gateway.gc_watch import GarbageCollection
    from gateway.http.accesslog import json_lines_observer
    from gateway.http.app import GatewayApp
    from gateway.http.service import GatewayService
    from gateway.monotonic import use_monotonic_clock
    from gateway.ws.mount import install_changes

    use_monotonic_clock(reactor)
    environ = dict(os.environ)
    try:
        settings = settings_from(args, environ)
        trust_root = _trust_root(settings)
    except ValueError as exc:
        sys.stderr.write(f"wallaby: bad setting: {exc}\n")
        return 2
    embedded: EmbeddedCouch | None = None
    # Unset only: settings_from has refused an empty COUCHDB_URL or --couchdb-url.
    if args.couchdb_url is None and "COUCHDB_URL" not in environ:
        password = environ.get("WALLABY_EMBEDDED_ADMIN_PASSWORD", "admin")
        if not password:
            sys.stderr.write("wallaby: bad setting: WALLABY_EMBEDDED_ADMIN_PASSWORD: empty; "
                             "unset it for the default (admin) or give a password\n")
            return 2
        port = args.couch_port or 5984
        if not _port_free("127.0.0.1", port):
            port = free_port()
        embedded = EmbeddedCouch(Path(settings.embedded_data_dir), port=port,
                                 admin_password=password)
        try:
            embedded.start()
        except FileNotFoundError as exc:
            sys.stderr.write(
                "wallaby: no CouchDB: COUCHDB_URL (or --couchdb-url) is not set, and the "
                f"embedded development server cannot start: {exc}\n")
            return 1
        except (RuntimeError, OSError) as exc:
            embedded.stop()
            sys.stderr.write(f"wallaby: the embedded CouchDB did not start: {exc} "
                             f"(its log: {embedded.data_dir / 'stdout.log'})\n")
            return 1
        provision_demo(embedded.url, (embedded.admin_username, password))
        settings = settings.with_overrides(
            couchdb_url=embedded.url, couchdb_user=embedded.admin_username,
            couchdb_password=password,
        )
    observer = (json_lines_observer(sys.stdout) if settings.log_format == "json"
                else textFileLogObserver(sys.stdout))
    globalLogBeginner.beginLoggingTo([AcceptErrorSummary(observer, reactor)],
                                     redirectStandardIO=False)
    route_stdlib_logging(globalLogPublisher)
    # From here on every message is a log event (WALLABY_LOG_FORMAT); only the banner and
    # READY are written to stderr as they are.
    log = Logger(namespace="gateway")
    _raise_descriptor_limit()
    # Found once now: asked first with no descriptor left (to spool a body), tempfile
    # would fail as "no usable temporary directory", not as too many open files.
    tempfile.gettempdir()

    if not settings.couchdb_user and split_credentials(settings.couchdb_url)[1] is None:
        log.warn(
            "no service credentials (COUCHDB_USER, or user:password@ in COUCHDB_URL): live "
            "changes of a database anonymous users may not read will be refused "
            "(service_refused)")
    pool = connection_pool(reactor, tls_trust_root=trust_root)
    pool.maxPersistentPerHost = 32
    service_auth = (BasicAuth(settings.couchdb_user, settings.couchdb_password or "")
                    if settings.couchdb_user else None)
    couch = CouchServer(settings.couchdb_url, reactor=reactor, pool=pool, auth=service_auth,
                        timeout=settings.request_timeout)
    app = GatewayApp(settings, couch=couch, reactor=reactor)
    changes = install_changes(app, couch, settings, reactor)
    service = GatewayService(app, reactor, settings.host, settings.port, pool=pool)
    collection = GarbageCollection(
        freeze_after=settings.gc_freeze_after_ms / 1000 if settings.gc_freeze_after_ms else None,
        quiet=lambda: app.in_flight.count == 0)
    app.metrics.add_collector(collection.prometheus)

    def announce(_: object) -> None:
        url = f"http://{settings.host}:{service.port}/"
        sys.stderr.write(f"Wallaby Gateway listening on {url}  (API docs: {url}docs)\n")
        sys.stderr.write(f"Upstream CouchDB: {couch.url}\n")
        if embedded is not None:
            sys.stderr.write(f"Demo page: {url}  user {DEMO_USER} / password {DEMO_PASSWORD}, "
                             f"database '{DEMO_DB}'\n")
        sys.stderr.write(f"READY {service.port}\n")
        sys.stderr.flush()

    exit_status = 0

    def failed(failure: Any) -> None:
        nonlocal exit_status
        exit_status = 1
        log.error("cannot listen: {reason}", reason=failure.getErrorMessage())
        reactor.stop()

    async def shutdown() -> None:
        # /ready fails first; the gateway serves on for WALLABY_SHUTDOWN_DRAIN while load
        # balancers notice; then WebSockets close (closing + 1001, upstream feeds closed),
        # HTTP stops accepting and finishes what is in flight.
        app.draining = True
        try:
            if settings.shutdown_drain > 0:
                await service.drain(settings.shutdown_drain)
            await changes.stopService()
        finally:
            await service.stopService()
            collection.stopService()

    service.ready.addCallbacks(announce, failed)
    reactor.callWhenRunning(changes.startService)
    reactor.callWhenRunning(service.startService)
    reactor.callWhenRunning(collection.startService)  # last: everything start-up made exists
    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: Deferred.fromCoroutine(shutdown()))
    reactor.callWhenRunning(_stop_once_on_signals, reactor)
    try:
        reactor.run()
    finally:
        if embedded is not None:
            embedded.stop()
    return exit_status


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
