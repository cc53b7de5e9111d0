"""Fixtures of the multi-gateway tests: gateway processes, HAProxy, users and databases."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CouchBackend
from tests.multigw.stack import (
    Gateway,
    HAProxy,
    admin_call,
    compose_value,
    start_gateway,
    start_haproxy,
    stop_process,
    stop_processes,
)


@dataclass
class Lab:
    backend: CouchBackend
    workdir: Path
    gateways: list[Gateway] = field(default_factory=list)
    proxies: list[HAProxy] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    dbs: list[str] = field(default_factory=list)

    @property
    def admin(self) -> tuple[str, str]:
        return (self.backend.admin_username, self.backend.admin_password)

    def couch(self, method: str, path: str, body: Any = None) -> Any:
        return admin_call(self.backend.url, self.admin, method, path, body)

    def gateway(self, name: str, **env: str) -> Gateway:
        # As the cluster profile runs them (docker-compose.yml), minus the rate limit.
        defaults = {"WALLABY_RATE_LIMIT_PER_SECOND": "0", "WALLABY_SHUTDOWN_DRAIN": compose_value("WALLABY_SHUTDOWN_DRAIN")}
        gateway = start_gateway(name, self.backend.admin_url, self.workdir, {**defaults, **env})
        self.gateways.append(gateway)
        return gateway

    def haproxy(self, *gateways: Gateway, source: str | None = None,
                backend_extra: str = "", edits: dict[str, str] | None = None) -> HAProxy:
        proxy = start_haproxy({g.name: g.port for g in gateways}, self.workdir,
                              source=source, backend_extra=backend_extra, edits=edits or {})
        self.proxies.append(proxy)
        return proxy

    def user(self, password: str | None = None) -> tuple[str, str]:
        name = f"user_{uuid.uuid4().hex[:10]}"
        password = password or uuid.uuid4().hex
        answer = self.couch("PUT", f"/_users/org.couchdb.user:{name}",
                            {"_id": f"org.couchdb.user:{name}", "name": name, "type": "user",
                             "roles": [], "password": password})
        assert answer.status in (201, 202), answer
        self.users.append(name)
        return name, password

    def database(self, members: list[str] | None = None) -> str:
        name = f"db_{uuid.uuid4().hex[:10]}"
        assert self.couch("PUT", f"/{name}").status in (201, 202)
        security = {"admins": {"names": [], "roles": []},
                    "members": {"names": members or [], "roles": []}}
        assert self.couch("PUT", f"/{name}/_security", security).status in (200, 201)
        self.dbs.append(name)
        return name


@pytest.fixture
def lab(couch_backend: CouchBackend, tmp_path: Path) -> Iterator[Lab]:
    """Gateways and proxies started by a test, all stopped after it."""
    state = Lab(couch_backend, tmp_path)
    try:
        yield state
    finally:
        for proxy in state.proxies:
            stop_process(proxy.process, 5)
        stop_processes([gateway.process for gateway in state.gateways], 20)
        for name in state.dbs:
            with contextlib.suppress(Exception):
                state.couch("DELETE", f"/{name}")
        for name in state.users:
            try:
                doc = state.couch("GET", f"/_users/org.couchdb.user:{name}")
                if doc.status == 200:
                    state.couch("DELETE", f"/_users/org.couchdb.user:{name}?rev={doc.json['_rev']}")
            except Exception:
                pass


def attach_log(lab: Lab) -> Callable[[], str]:
    def text() -> str:
        return "\n".join(f"--- {g.name}\n{g.output()[-3000:]}" for g in lab.gateways)

    return text
