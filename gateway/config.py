"""Gateway settings: one frozen dataclass, read from environment variables.

Every field is documented in the README's configuration table; the environment variable
of a field is ``WALLABY_`` + its upper-cased name, except ``COUCHDB_URL`` and the service
credentials, which use the names CouchDB deployments already use. CLI flags of
``python -m gateway run`` override the environment.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

import idna

from gateway.couch.urls import check_upstream_host, split_credentials
from gateway.http.client_address import parse_networks, valid_ipv6_prefix

__all__ = ["Settings", "parse_number", "parse_whole_number"]


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def web_origin(value: str) -> str:
    """``value`` as a browser serializes it in ``Origin`` (RFC 6454): ``scheme://host[:port]``.

    Scheme and host are lower-cased and a default port dropped, since origins are then
    compared as strings. ``*`` stays as it is.

    Raises:
        ValueError: Not an origin: no scheme or host, or a path, query, user or ``null``
            (the origin of sandboxed frames and local files, whatever site they are from).
    """
    if value == "*":
        return value
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.scheme or not parts.hostname or parts.username is not None \
            or parts.password is not None or parts.path or parts.query or parts.fragment \
            or port == -1 or "://" not in value:
        raise ValueError(
            f"{value!r} is not an origin: scheme://host[:port] with nothing after it, "
            "as browsers send it (e.g. https://app.example.com)"
        )
    host = _origin_host(value, parts.hostname)
    scheme = parts.scheme.lower()
    default = {"ftp": 21, "http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def whatwg_ipv6(address: ipaddress.IPv6Address) -> str:
    """An IPv6 address as browsers write it (the WHATWG URL standard's IPv6 serializer).

    Eight hex pieces, the first longest run of two or more zero pieces written ``::``,
    and never a dotted IPv4 tail: ``::ffff:7f00:1``, where Python 3.13's ``compressed``
    writes ``::ffff:127.0.0.1``.
    """
    number = int(address)
    pieces = [(number >> (16 * (7 - index))) & 0xFFFF for index in range(8)]
    run_start, run_length = -1, 1
    index = 0
    while index < 8:
        end = index
        while end < 8 and pieces[end] == 0:
            end += 1
        if end - index > run_length:
            run_start, run_length = index, end - index
        index = max(end, index + 1)
    if run_start < 0:
        return ":".join(f"{piece:x}" for piece in pieces)
    head = ":".join(f"{piece:x}" for piece in pieces[:run_start])
    tail = ":".join(f"{piece:x}" for piece in pieces[run_start + run_length:])
    return f"{head}::{tail}"


def _origin_host(value: str, host: str) -> str:
    """A host as browsers serialize it (the WHATWG URL standard's host parser).

    IPv6 compressed in brackets (no zone), IPv4 in any of its numeric forms as a dotted
    quad (``127.1`` is ``127.0.0.1``), a domain mapped by UTS #46 (non-transitional,
    as browsers do: ``faß.de`` is ``xn--fa-hia.de``), each non-ASCII label in punycode.
    """
    refused = ValueError(f"{value!r} is not an origin: {host!r} is not a host name or address")
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise refused from None
        if address.scope_id:
            raise refused  # browsers take no zone
        return f"[{whatwg_ipv6(address)}]"
    try:
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        labels = [label if label.isascii() else idna.alabel(label).decode("ascii")
                  for label in mapped.split(".")]
    except (idna.IDNAError, UnicodeError):
        raise refused from None
    name = ".".join(labels)
    last = labels[-2] if len(labels) > 1 and not labels[-1] else labels[-1]
    if _NUMBER_LABEL.fullmatch(last):  # ends in a number: an IPv4 address, or nothing
        if not all(_NUMBER_LABEL.fullmatch(label) for label in name.rstrip(".").split(".")):
            raise refused  # inet_aton would stop at a space and keep what came before
        try:
            return socket.inet_ntoa(socket.inet_aton(name.rstrip(".")))
        except OSError:
            raise refused from None
    if not _HOST_NAME.fullmatch(name):
        raise refused
    return name


#: Settings that take one of a few words.
_CHOICES: dict[str, tuple[str, ...]] = {
    "auth_mode": ("forward", "jwt", "proxy"),
    "proxy_hash": ("sha256", "sha1", "sha224", "sha384", "sha512"),
    "cookie_samesite": ("Strict", "Lax", "None"),
    "log_format": ("json", "text"),
}
#: A host name as browsers send it in ``Origin`` once mapped: dotted labels of letters,
#: digits, hyphens and underscores, maybe a final dot.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
#: A last label that makes a host an IPv4 address (decimal, or hexadecimal after 0x).
_NUMBER_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
#: A cookie name: an RFC 9110 token (RFC 6265, section 4.1.1).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A whole number in ASCII digits (``int()`` also takes other scripts' digits and ``_``).
_INTEGER = re.compile(r"[+-]?[0-9]+")
#: A decimal number in ASCII digits, maybe with an exponent (``float()`` also takes
#: other scripts' digits, ``_``, ``nan`` and ``inf``).
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: Sizes and durations where 0 would refuse or time out everything.
_POSITIVE = (
    "max_body_bytes", "max_attachment_bytes", "request_timeout", "rate_limit_burst",
    "ws_max_subscriptions", "ws_max_user_feeds", "ws_max_feeds",
    "ws_max_message_bytes", "ws_queue_bytes", "feed_heartbeat_ms", "buffer_answer_bytes",
    "send_stall_timeout",
)
#: The most threads a broadcast's send loop may be split into (``ws_send_threads``).
MAX_SEND_THREADS = 64
#: Where 0 means "off" (or "at once").
_NOT_NEGATIVE = (
    "rate_limit_per_second", "login_max_failures", "login_lockout_seconds", "shutdown_grace",
    "shutdown_drain",
    "compress_min_bytes", "ws_ping_interval", "ws_auth_recheck", "ws_send_threads",
    "gc_freeze_after_ms",
    "header_timeout", "idle_timeout",
)


def parse_whole_number(raw: str) -> int:
    """A whole number written in ASCII digits (``-5``, ``8080``), for settings and flags.

    Raises:
        ValueError: Anything else: ``1_000``, other scripts' digits, ``0x50``, ``1.5``.
    """
    if not _INTEGER.fullmatch(raw.strip()):
        raise ValueError(f"{raw!r} is not a whole number")
    return int(raw)


def parse_number(raw: str) -> float:
    """A finite decimal number written in ASCII digits (``2.5``, ``30``, ``1e3``).

    Raises:
        ValueError: Anything else: ``1_0``, other scripts' digits, ``nan``, ``inf``.
    """
    text = raw.strip()
    if not _DECIMAL.fullmatch(text):
        if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise ValueError(f"{raw!r} is not a finite number")
        raise ValueError(f"{raw!r} is not a number (ASCII digits, e.g. 2.5)")
    number = float(text)
    if not math.isfinite(number):  # 1e999
        raise ValueError(f"{raw!r} is not a finite number")
    return number


@dataclass(frozen=True)
class Settings:
    """Everything the gateway can be configured with.

    Attributes:
        couchdb_url: Upstream CouchDB URL (``COUCHDB_URL``); credentials in it are the
            service credentials.
        couchdb_user: Service user (``COUCHDB_USER``), used only for the gateway's own
            checks (readiness), never for a user's request.
        couchdb_password: Its password (``COUCHDB_PASSWORD``).
        couchdb_ca_file: For an ``https://`` ``couchdb_url``: a PEM file of the CA
            certificates to trust instead of the system's (a private CA).
        host: Listen address.
        port: Listen port.
        public_url: The externally visible base URL, optional and informational (neither
            links nor cookies are built from it).
        cors_origins: Origins allowed by CORS and for WebSocket handshakes (``*`` allows any).
        trusted_proxies: Addresses or ranges of reverse proxies whose ``X-Forwarded-For``
            names the client (rate limits, failed logins, access log).
        ipv6_client_prefix: Leading bits of an IPv6 client address that the rate limit
            and the failed-login lockout count as one client (32 to 128; an IPv6 host
            may use any address of the /64 it is given).
        allow_anonymous: Let requests without credentials through (CouchDB still decides).
        auth_mode: How a user's identity reaches CouchDB: ``forward`` (their session
            cookie or Basic credentials), ``proxy`` (CouchDB proxy authentication, needs
            ``proxy_secret``) or ``jwt`` (bearer tokens passed to CouchDB's JWT handler).
        proxy_secret: ``[chttpd_auth] secret`` for proxy authentication.
        proxy_hash: The HMAC hash of the proxy token: ``sha256`` for CouchDB 3.3.2 and
            later (one of its ``[chttpd_auth] hash_algorithms``, by default ``sha256,
            sha``), ``sha1`` for CouchDB 3.0 to 3.3.1, which check HMAC-SHA1 only.
        cookie_name: Name of the gateway's session cookie.
        cookie_secure: Mark the cookie ``Secure`` (on behind TLS).
        cookie_samesite: ``Strict``, ``Lax`` or ``None``.
        max_body_bytes: Largest JSON request body accepted (413 beyond).
        max_attachment_bytes: Largest attachment upload accepted (413 beyond).
        request_timeout: Seconds an upstream request may take (504 beyond).
        rate_limit_per_second: Sustained requests per second per client (0: off).
        rate_limit_burst: Requests a client may burst above the sustained rate.
        login_max_failures: Failed logins (``POST /api/v1/session`` or Basic credentials)
            of one account from one client address before its attempts are refused
            (429) for ``login_lockout_seconds`` (0: no limit).
        login_lockout_seconds: How long a failure counts.
        header_timeout: Seconds a client has from its request line to the end of its
            headers, however steadily they trickle (0: no limit).
        idle_timeout: Seconds an HTTP connection may stay silent, between requests or
            in the middle of a request body, before it is closed (0: never).
        send_stall_timeout: Seconds a client may read nothing of a streamed response
            (a download, a large answer) before its connection is cut.
        shutdown_grace: Seconds in-flight requests get after SIGTERM.
        shutdown_drain: Seconds the gateway keeps serving after SIGTERM, with ``/ready``
            failing and every answer closing its connection, before it closes its
            WebSockets and stops listening: time for a load balancer's health checks to
            take it out of rotation (0: none).
        splice_downloads: Relay large attachment downloads with ``splice(2)`` (Linux).
        splice_uploads: Relay large attachment upload bodies with ``splice(2)`` (Linux).
        compress_min_bytes: gzip JSON answers from CouchDB of at least this many bytes
            for clients that accept it (0: never).
        buffer_answer_bytes: Largest query answer (views, ``_all_docs``, ``_find``,
            ``_bulk_get``) or document read whole before it is relayed; a larger one
            streams to the client as CouchDB sends it, without an ``ETag`` made from it.
        ws_max_subscriptions: Subscriptions one WebSocket connection may hold.
        ws_max_user_feeds: Distinct feeds (database and options, and for a design filter
            its design document's revision) one user's subscriptions may follow over all
            their connections (any number may share one).
        ws_max_feeds: Upstream ``_changes`` feeds the gateway keeps open at most.
        ws_max_message_bytes: Largest WebSocket message a client may send.
        ws_queue_bytes: Bytes queued for one slow WebSocket client before it is closed.
        ws_ping_interval: Seconds between keep-alive pings.
        ws_auth_recheck: Seconds between re-checks that a subscriber may still read.
        ws_send_threads: Threads that share the send loop of a change broadcast to many
            subscribers, the reactor thread included (0: the CPUs the process may use,
            by its affinity and its cgroup's CPU quota, at most 4; 1: the reactor thread
            alone).
        feed_heartbeat_ms: Heartbeat CouchDB sends on upstream ``_changes`` feeds.
        gc_freeze_after_ms: A full garbage collection that paused the gateway this long
            (milliseconds) freezes what survived it, so later ones skip it (0: off).
        attachment_csp: ``Content-Security-Policy`` of attachment downloads, as CouchDB
            sends it (``sandbox``: stored HTML or SVG cannot run script on the gateway's
            origin); empty: none.
        log_format: ``json`` or ``text`` access logs.
        embedded_data_dir: Data folder of the embedded server (no ``COUCHDB_URL``).
    """

    couchdb_url: str = "http://127.0.0.1:5984"
    couchdb_user: str | None = None
    couchdb_password: str | None = field(default=None, repr=False)
    couchdb_ca_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    ipv6_client_prefix: int = 64
    allow_anonymous: bool = False
    auth_mode: str = "forward"
    proxy_secret: str | None = field(default=None, repr=False)
    proxy_hash: str = "sha256"
    cookie_name: str = "wallaby_session"
    cookie_secure: bool = False
    cookie_samesite: str = "Lax"
    max_body_bytes: int = 8 * 1024 * 1024
    max_attachment_bytes: int = 4 * 1024 * 1024 * 1024
    request_timeout: float = 30.0
    header_timeout: float = 20.0
    idle_timeout: float = 60.0
    send_stall_timeout: float = 60.0
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 200
    login_max_failures: int = 5
    login_lockout_seconds: float = 300.0
    shutdown_grace: float = 10.0
    shutdown_drain: float = 0.0
    splice_downloads: bool = True
    splice_uploads: bool = True
    compress_min_bytes: int = 1400
    buffer_answer_bytes: int = 4 * 1024 * 1024
    attachment_csp: str = "sandbox"
    ws_max_subscriptions: int = 32
    ws_max_user_feeds: int = 64
    ws_max_feeds: int = 1000
    ws_max_message_bytes: int = 64 * 1024
    ws_queue_bytes: int = 1024 * 1024
    ws_ping_interval: float = 20.0
    ws_auth_recheck: float = 30.0
    ws_send_threads: int = 0
    feed_heartbeat_ms: int = 10_000
    gc_freeze_after_ms: int = 50
    log_format: str = "json"
    embedded_data_dir: str = "var/couch"

    _ENV_NAMES = {
        "couchdb_url": "COUCHDB_URL",
        "couchdb_user": "COUCHDB_USER",
        "couchdb_password": "COUCHDB_PASSWORD",
    }

    def __post_init__(self) -> None:
        """Refuse values that parse but make no sense; the message names the variable.

        Raises:
            ValueError: A setting is out of its range or not one of its choices.
        """
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            canonical = {choice.lower(): choice for choice in choices}.get(str(value).lower())
            if canonical is None:
                raise ValueError(
                    f"{self.env_name(name)}: {value!r} is not one of {', '.join(choices)}"
                )
            object.__setattr__(self, name, canonical)  # frozen: set once, here
        if self.auth_mode == "proxy" and not self.proxy_secret:
            raise ValueError(
                "WALLABY_PROXY_SECRET: proxy mode signs every user's identity with CouchDB's "
                "[chttpd_auth] secret; set it (CouchDB must trust only signed headers)"
            )
        try:
            split_credentials(self.couchdb_url)
        except ValueError as exc:
            raise ValueError(f"{self.env_name('couchdb_url')}: {exc}") from None
        upstream = urlsplit(self.couchdb_url)
        if upstream.scheme not in ("http", "https") or not upstream.hostname:
            raise ValueError(
                f"{self.env_name('couchdb_url')}: not an http:// or https:// URL with a host "
                "(e.g. http://admin:password@127.0.0.1:5984)"
            )
        try:
            check_upstream_host(self.couchdb_url)
        except ValueError as exc:
            raise ValueError(f"{self.env_name('couchdb_url')}: {exc}") from None
        try:
            origins = tuple(web_origin(origin) for origin in self.cors_origins)
        except ValueError as exc:
            raise ValueError(f"{self.env_name('cors_origins')}: {exc}") from None
        object.__setattr__(self, "cors_origins", origins)
        if any(ord(char) < 32 or ord(char) == 127 for char in self.attachment_csp):
            raise ValueError(
                f"{self.env_name('attachment_csp')}: a header value cannot hold control "
                "characters (line breaks included)"
            )
        if not self.embedded_data_dir.strip():
            raise ValueError(f"{self.env_name('embedded_data_dir')}: empty (the embedded "
                             "server would write its databases into the working directory)")
        if not _TOKEN.fullmatch(self.cookie_name):
            raise ValueError(
                f"{self.env_name('cookie_name')}: {self.cookie_name!r} is not a cookie name "
                "(letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{self.env_name(spec.name)}: {value} is not a finite number")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"{self.env_name('trusted_proxies')}: {exc}") from None
        try:
            valid_ipv6_prefix(self.ipv6_client_prefix)
        except ValueError as exc:
            raise ValueError(f"{self.env_name('ipv6_client_prefix')}: {exc}") from None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{self.env_name('port')}: {self.port} is not a TCP port")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"{self.env_name(name)}: must be more than 0, not {getattr(self, name)}"
                )
        for name in _NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{self.env_name(name)}: must be 0 or more, not {getattr(self, name)}"
                )
        if self.ws_send_threads > MAX_SEND_THREADS:
            raise ValueError(
                f"{self.env_name('ws_send_threads')}: at most {MAX_SEND_THREADS} (more threads "
                f"than CPUs only take turns), not {self.ws_send_threads}"
            )

    @property
    def cookie_is_secure(self) -> bool:
        """Whether the session cookie is ``Secure`` (asked, or implied by ``SameSite=None``).

        Browsers keep such a cookie only from an ``https`` origin: the gateway is served
        over TLS.
        """
        return self.cookie_secure or self.cookie_samesite.lower() == "none"

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of a field."""
        return cls._ENV_NAMES.get(name, "WALLABY_" + name.upper())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from environment variables (``os.environ`` by default).

        Raises:
            ValueError: A variable does not parse; the message names it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name.startswith("_"):
                continue
            raw = env.get(cls.env_name(spec.name))
            if raw is None:
                continue
            values[spec.name] = cls.parse(spec.name, raw)
        return cls(**values)

    @classmethod
    def parse(cls, name: str, raw: str) -> Any:
        """The value of field ``name`` written as ``raw`` (a variable's or a flag's).

        Empty is a value only for text and lists: an empty number, boolean or
        ``COUCHDB_URL`` is refused rather than read as something the operator did not write.

        Raises:
            ValueError: It does not parse, or is empty where that means nothing; the
                message names the variable.
        """
        default = getattr(cls, name, None)
        if not raw.strip():
            # Compose files' ${FOO:-} set a variable empty: not "unset", and no value.
            if name == "couchdb_url":
                raise ValueError(
                    f"{cls.env_name(name)}: empty; unset it to start the embedded development "
                    "server (an empty value never does: it would serve another data store)")
            if isinstance(default, bool | int | float):
                written = (str(default).lower() if isinstance(default, bool)
                           else f"{default:g}" if isinstance(default, float) else str(default))
                raise ValueError(
                    f"{cls.env_name(name)}: empty; unset it for the default ({written}) "
                    "or give a value")
        try:
            if isinstance(default, bool):
                return _bool(raw)
            if isinstance(default, int):
                return parse_whole_number(raw)
            if isinstance(default, float):
                return parse_number(raw)
            if isinstance(default, tuple):
                return _split(raw)
        except ValueError as exc:
            raise ValueError(f"{cls.env_name(name)}: {exc}") from None
        return raw

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
