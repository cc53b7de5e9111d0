"""The embedded CouchDB-compatible server: ``pouchdb-server`` in a child process.

Used by the test suite and by ``make run`` when no ``COUCHDB_URL`` is given. The server
listens on loopback only, keeps its data in an on-disk folder (a restart keeps the
data), and has one admin user. This module manages a child process from outside any
reactor (before it starts, or from test fixtures), so it uses ``subprocess`` directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EmbeddedCouch", "find_pouchdb_server", "free_port"]

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Makes the server exit when the process that started it dies (even by SIGKILL).
_WATCHDOG = Path(__file__).resolve().parent / "embedded_watchdog.js"
_OVERRIDE = "WALLABY_POUCHDB_SERVER"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("Node.js is not installed (pouchdb-server needs it)")
    return node


def find_pouchdb_server() -> Path:
    """Locate the ``pouchdb-server`` executable.

    ``WALLABY_POUCHDB_SERVER``, when set, is the only place looked at; otherwise the
    project's ``node_modules/.bin`` (installed by ``npm ci``), the current folder's, then
    ``PATH``.

    Raises:
        FileNotFoundError: ``WALLABY_POUCHDB_SERVER`` names no file, or it is unset and
            none was found.
    """
    override = os.environ.get(_OVERRIDE)
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"{_OVERRIDE}: no such file: {override}")
        return Path(override)
    candidates = [_PROJECT_ROOT / "node_modules" / ".bin" / "pouchdb-server",
                  Path.cwd() / "node_modules" / ".bin" / "pouchdb-server"]
    on_path = shutil.which("pouchdb-server")
    if on_path is not None:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"pouchdb-server was found neither in node_modules/.bin nor on PATH: set {_OVERRIDE} "
        "to its executable (in a checkout of the project, 'npm ci' installs it)"
    )


def password_matches(stored: object, password: str) -> bool:
    """Whether a stored admin entry is the hash of ``password``.

    The entry is CouchDB-style, ``-pbkdf2-<key>,<salt>,<iterations>``, as pouchdb-server
    writes it (PBKDF2-SHA1 with a 20-byte key).
    """
    if not isinstance(stored, str) or not stored.startswith("-pbkdf2-"):
        return False
    try:
        key, salt, iterations = stored[len("-pbkdf2-"):].split(",")
        derived = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(),
                                      int(iterations), 20)
    except ValueError:
        return False
    return hmac.compare_digest(derived.hex(), key)


@dataclass
class EmbeddedCouch:
    """A ``pouchdb-server`` child process with an admin user and an on-disk data folder.

    Args:
        data_dir: Where databases, the config file and the log live.
        port: TCP port on 127.0.0.1 (a free one when 0).
        admin_username: The admin user created on first start.
        admin_password: Its password.
    """

    data_dir: Path
    port: int = 0
    admin_username: str = "admin"
    admin_password: str = "admin"  # noqa: S105 - local development default, loopback only
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The server URL without credentials."""
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        """The server URL with the admin credentials in it."""
        return f"http://{self.admin_username}:{self.admin_password}@{self.host}:{self.port}"

    def __post_init__(self) -> None:
        # pouchdb-server runs in the data folder: a relative path would point inside it.
        self.data_dir = Path(self.data_dir).resolve()

    def _write_config(self) -> Path:
        config = self.data_dir / "config.json"
        settings: dict[str, dict[str, object]] = {}
        if config.exists():
            settings = json.loads(config.read_text())
        # The configured password always wins (pouchdb-server hashes a plain-text admin
        # password on start, like CouchDB), also over a hash left by an earlier start. A
        # hash of that same password is kept: a new one has a new salt, and session
        # cookies are signed with the salt, so the admin would be logged out.
        admins = settings.setdefault("admins", {})
        if not password_matches(admins.get(self.admin_username), self.admin_password):
            admins[self.admin_username] = self.admin_password
        # Session cookies are signed with this secret; pouchdb-server draws a new one on
        # every start unless it is configured, which would log every browser out.
        auth = settings.setdefault("couch_httpd_auth", {})
        auth.setdefault("secret", secrets.token_hex(16))
        settings.setdefault("log", {})["file"] = str(self.data_dir / "log.txt")
        settings.setdefault("httpd", {})["bind_address"] = self.host
        config.write_text(json.dumps(settings, indent=2))
        return config

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it answers as the admin.

        Raises:
            FileNotFoundError: pouchdb-server or Node.js is missing (nothing was written).
            RuntimeError: It exited or did not answer within ``timeout`` seconds.
        """
        if self.process is not None and self.process.poll() is None:
            return
        # Found before anything is written: a start that cannot happen must not leave
        # a config (admin password, cookie secret) in whatever folder it ran in.
        server = find_pouchdb_server().resolve()
        node = _node()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The folder holds the admin password's hash, the cookie secret and the data.
        self.data_dir.chmod(0o700)
        if not self.port:
            self.port = free_port(self.host)
        config = self._write_config()
        log = (self.data_dir / "stdout.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [
                node, "--require", str(_WATCHDOG), str(server),
                "--port", str(self.port),
                "--host", self.host,
                "--dir", str(self.data_dir) + os.sep,
                "--config", str(config),
                "--no-stdout-logs",
            ],
            cwd=self.data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "WALLABY_PARENT_PID": str(os.getpid())},
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        token = base64.b64encode(f"{self.admin_username}:{self.admin_password}".encode())
        request = urllib.request.Request(  # noqa: S310 - loopback http only
            f"{self.url}/_session", headers={"Authorization": f"Basic {token.decode()}"}
        )
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = (self.data_dir / "stdout.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"pouchdb-server exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
                    body = json.loads(answer.read())
                if "_admin" in body.get("userCtx", {}).get("roles", []):
                    return
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pouchdb-server did not become ready within {timeout:g} s")

    def kill(self) -> None:
        """``SIGKILL`` the server (for fault tests); its data stays on disk."""
        self._signal(signal.SIGKILL)

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server: ``SIGTERM``, then ``SIGKILL`` after ``grace`` seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            return
        if signum == signal.SIGKILL:
            self.process.wait()

    def restart(self, timeout: float = 60.0) -> None:
        """Start again on the same port with the same data (after ``kill`` or ``stop``)."""
        if self.process is not None:
            self.stop()
        self.start(timeout)

    def __enter__(self) -> EmbeddedCouch:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
