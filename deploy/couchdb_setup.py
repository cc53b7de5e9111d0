#!/usr/bin/env python3
"""One-shot, idempotent CouchDB initialisation for Wallaby Gateway deployments.

Run by the ``couchdb-setup`` (single node) and ``couchdb-cluster-setup`` (three nodes)
services of ``docker-compose.yml``; standard library only, so it runs in the gateway image
or on any machine with Python 3.

Environment:
    COUCHDB_NODES: Comma-separated base URLs of the nodes, the first one coordinates
        (default ``http://couchdb:5984``). One URL: single-node setup. Several: a CouchDB
        cluster is formed with ``/_cluster_setup`` (enable_cluster, add_node,
        finish_cluster); each URL's host must be the node's ``NODENAME``.
    COUCHDB_USER / COUCHDB_PASSWORD: The admin credentials the nodes were started with.
    WALLABY_AUTH_MODE: ``proxy`` also enables CouchDB's proxy authentication handler
        (the gateway then signs ``X-Auth-CouchDB-Token`` with ``COUCHDB_SECRET``).
    DEMO_USER / DEMO_PASSWORD: Optional; an ordinary ``_users`` account for the demo page.
    SETUP_TIMEOUT: Seconds to wait for the nodes to come up (default 120).

Exits 0 when every node is set up (also when it already was), 1 otherwise. Secrets are
never printed.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SYSTEM_DBS = ("_users", "_replicator", "_global_changes")
#: Seconds a node may take to listen again after a restart of its HTTP listener.
RESTART_SECONDS = 60.0
RETRY_PAUSE = 0.5
AUTH_HANDLERS_PROXY = (
    "{chttpd_auth, cookie_authentication_handler}, "
    "{chttpd_auth, proxy_authentication_handler}, "
    "{chttpd_auth, default_authentication_handler}"
)
AUTH_HANDLERS_JWT = (
    "{chttpd_auth, jwt_authentication_handler}, "
    "{chttpd_auth, cookie_authentication_handler}, "
    "{chttpd_auth, default_authentication_handler}"
)


def jwt_keys(spec: str) -> dict[str, str]:
    """Parse ``COUCHDB_JWT_KEYS`` for CouchDB's ``[jwt_keys]`` section.

    Entries are ``kty:kid=key``, separated by ``;`` (e.g. ``hmac:_default=<base64 secret>``).

    Raises:
        SetupError: An entry is not ``kty:kid=key``.
    """
    keys: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        name, sep, key = entry.partition("=")
        if not sep or not key or name.count(":") != 1 or not all(name.split(":")):
            raise SetupError("COUCHDB_JWT_KEYS: each entry is kty:kid=key (e.g. hmac:_default=...)")
        keys[name] = key
    return keys


class SetupError(Exception):
    """A step failed; the message says which."""


class Node:
    """One CouchDB node reached over HTTP with the admin's Basic credentials."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.host = urllib.parse.urlsplit(self.url).hostname or ""
        self.port = urllib.parse.urlsplit(self.url).port or 5984
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; returns (status, decoded JSON or None). Never raises on 4xx/5xx.

        A request other than ``POST`` (all of them idempotent here) is sent again while
        the connection is refused or cut, for up to :data:`RESTART_SECONDS`: CouchDB
        restarts its listener when a setup action changes ``bind_address``.

        Raises:
            OSError: No answer (for a ``POST``: at once; otherwise after the retries).
        """
        deadline = time.monotonic() + RESTART_SECONDS
        while True:
            try:
                return self._send(method, path, body)
            except (ConnectionError, urllib.error.URLError) as exc:
                lost = isinstance(exc, ConnectionError) or isinstance(
                    getattr(exc, "reason", None), ConnectionError)
                if method == "POST" or not lost or time.monotonic() > deadline:
                    raise
                time.sleep(RETRY_PAUSE)

    def _send(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Authorization", self._auth)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def expect(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = ()) -> Any:
        """Like :meth:`request` but raises :class:`SetupError` unless 2xx or in ``ok``."""
        status, doc = self.request(method, path, body)
        if 200 <= status < 300 or status in ok:
            return doc
        raise SetupError(f"{method} {self.host}{path.split('?')[0]}: HTTP {status} {doc}")


def log(message: str) -> None:
    """Print one progress line (never a secret)."""
    print(f"couchdb-setup: {message}", flush=True)


def wait_up(nodes: list[Node], timeout: float) -> None:
    """Wait until every node answers ``/_up`` with 200."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        while True:
            try:
                status, _ = node.request("GET", "/_up")
            except (OSError, urllib.error.URLError):
                status = 0
            if status == 200:
                log(f"{node.host} is up")
                break
            if time.monotonic() > deadline:
                raise SetupError(f"{node.host} not up after {timeout:.0f}s")
            time.sleep(1)


def setup_state(node: Node) -> str:
    """The node's ``/_cluster_setup`` state."""
    doc = node.expect("GET", "/_cluster_setup")
    return str((doc or {}).get("state", ""))


def setup_single(node: Node, user: str, password: str) -> None:
    """Single-node mode and system databases, unless already done."""
    state = setup_state(node)
    if state == "single_node_enabled":
        log("single node already set up")
    else:
        status, doc = post_setup(node, {
            "action": "enable_single_node", "username": user, "password": password,
            "bind_address": "0.0.0.0", "port": node.port,  # noqa: S104 (inside the container)
        })
        if setup_state(node) != "single_node_enabled":
            raise SetupError(f"enable_single_node: HTTP {status} {doc}")
        log("single node enabled")
    ensure_system_dbs(node)


def post_setup(node: Node, action: dict[str, Any]) -> tuple[int, Any]:
    """POST a ``/_cluster_setup`` action whose answer may be lost.

    Setting ``bind_address`` (the official image has ``any``) makes CouchDB restart its
    HTTP listener, which can cut the connection that asked. The action's effect is then
    read back by the caller; ``(0, None)`` stands for the lost answer.
    """
    try:
        return node.request("POST", "/_cluster_setup", action)
    except (ConnectionError, urllib.error.URLError) as exc:
        log(f"{action['action']}: the answer was lost ({type(exc).__name__}), checking")
        return 0, None


def setup_cluster(nodes: list[Node], user: str, password: str) -> None:
    """Form the cluster from the coordinator, then verify the membership."""
    coordinator, others = nodes[0], nodes[1:]
    state = setup_state(coordinator)
    if state == "cluster_finished":
        log("cluster already finished")
    else:
        count = str(len(nodes))
        status, doc = post_setup(coordinator, {
            "action": "enable_cluster", "bind_address": "0.0.0.0",  # noqa: S104
            "username": user, "password": password, "node_count": count,
        })
        refused = status >= 300 and "already enabled" not in json.dumps(doc)
        lost = status == 0 and setup_state(coordinator) != "cluster_enabled"
        if refused or lost:
            raise SetupError(f"enable_cluster on {coordinator.host}: HTTP {status} {doc}")
        members = coordinator.expect("GET", "/_membership") or {}
        joined = set(members.get("cluster_nodes", []))
        for node in others:
            if f"couchdb@{node.host}" in joined:
                log(f"{node.host} already joined")
                continue
            status, doc = coordinator.request("POST", "/_cluster_setup", {
                "action": "enable_cluster", "bind_address": "0.0.0.0",  # noqa: S104
                "username": user, "password": password, "port": node.port,
                "node_count": count, "remote_node": node.host,
                "remote_current_user": user, "remote_current_password": password,
            })
            if status >= 300 and "already enabled" not in json.dumps(doc):
                raise SetupError(f"enable_cluster on {node.host}: HTTP {status} {doc}")
            coordinator.expect("POST", "/_cluster_setup", {
                "action": "add_node", "host": node.host, "port": node.port,
                "username": user, "password": password,
            })
            log(f"{node.host} added")
        status, doc = coordinator.request("POST", "/_cluster_setup", {"action": "finish_cluster"})
        if status >= 300 and "already finished" not in json.dumps(doc):
            raise SetupError(f"finish_cluster: HTTP {status} {doc}")
        log("cluster finished")
    wanted = {f"couchdb@{node.host}" for node in nodes}
    members = coordinator.expect("GET", "/_membership") or {}
    missing = wanted - set(members.get("cluster_nodes", []))
    if missing:
        raise SetupError(f"nodes missing from the cluster: {sorted(missing)}")
    ensure_system_dbs(coordinator)
    sync_admin_hash(nodes, user)


def ensure_system_dbs(node: Node) -> None:
    """Create the system databases that are missing."""
    for db in SYSTEM_DBS:
        node.expect("PUT", "/" + db, ok=(412,))
    log("system databases present: " + ", ".join(SYSTEM_DBS))


def sync_admin_hash(nodes: list[Node], user: str) -> None:
    """Give every node the coordinator's admin hash, so admin session cookies work on all."""
    path = "/_node/_local/_config/admins/" + urllib.parse.quote(user, safe="")
    reference = nodes[0].expect("GET", path)
    for node in nodes[1:]:
        if node.expect("GET", path) != reference:
            node.expect("PUT", path, reference)
    log("admin password hash identical on all nodes")


def configure(nodes: list[Node], env: dict[str, str]) -> None:
    """The gateway's CouchDB settings, on every node (``_config`` is per node)."""
    settings: dict[tuple[str, str], str] = {}
    mode = env.get("WALLABY_AUTH_MODE", "forward")
    if mode == "proxy":
        settings["chttpd", "authentication_handlers"] = AUTH_HANDLERS_PROXY
        # Without it CouchDB trusts X-Auth-CouchDB-* headers from anyone who reaches it;
        # with it, only those signed with [chttpd_auth] secret (COUCHDB_SECRET).
        settings["chttpd_auth", "proxy_use_secret"] = "true"
    elif mode == "jwt":
        settings["chttpd", "authentication_handlers"] = AUTH_HANDLERS_JWT
        settings["jwt_auth", "required_claims"] = "exp"
        keys = jwt_keys(env.get("COUCHDB_JWT_KEYS", ""))
        if not keys:
            raise SetupError("WALLABY_AUTH_MODE=jwt needs COUCHDB_JWT_KEYS: the keys that "
                             "verify your tokens (kty:kid=key; ...), for CouchDB's [jwt_keys]")
        for name, key in keys.items():
            settings["jwt_keys", name] = key
    # Browsers only ever talk to the gateway, which does CORS itself.
    settings["chttpd", "enable_cors"] = "false"
    for node in nodes:
        for (section, key), value in settings.items():
            node.expect("PUT", f"/_node/_local/_config/{section}/{key}", value)
    log("node settings applied: " + ", ".join(f"{s}/{k}" for s, k in settings))


def ensure_demo_user(node: Node, name: str, password: str) -> None:
    """Create an ordinary ``_users`` account for the demo page, once."""
    doc_id = urllib.parse.quote("org.couchdb.user:" + name, safe="")
    status, _ = node.request("GET", "/_users/" + doc_id)
    if status == 200:
        log(f"demo user {name!r} exists")
        return
    node.expect("PUT", "/_users/" + doc_id, {
        "_id": "org.couchdb.user:" + name, "name": name, "password": password,
        "roles": [], "type": "user",
    }, ok=(409,))
    log(f"demo user {name!r} created")


def main(env: dict[str, str] | None = None) -> int:
    """Run every step; returns the exit status."""
    env = dict(os.environ if env is None else env)
    user, password = env.get("COUCHDB_USER", ""), env.get("COUCHDB_PASSWORD", "")
    if not user or not password:
        log("COUCHDB_USER and COUCHDB_PASSWORD must be set (see .env.example)")
        return 1
    urls = [u.strip() for u in env.get("COUCHDB_NODES", "http://couchdb:5984").split(",")]
    nodes = [Node(url, user, password) for url in urls if url]
    try:
        wait_up(nodes, float(env.get("SETUP_TIMEOUT", "120")))
        if len(nodes) == 1:
            setup_single(nodes[0], user, password)
        else:
            setup_cluster(nodes, user, password)
        configure(nodes, env)
        if env.get("DEMO_USER") and env.get("DEMO_PASSWORD"):
            ensure_demo_user(nodes[0], env["DEMO_USER"], env["DEMO_PASSWORD"])
    except (SetupError, OSError, urllib.error.URLError) as exc:
        log(f"FAILED: {exc}")
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
