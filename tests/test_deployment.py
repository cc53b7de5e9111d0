"""Deployment files: Dockerfile, docker-compose.yml (all profiles), HAProxy, one-shot setup.

Nothing here needs a Docker engine: ``deploy/validate.sh`` resolves the compose file with
Debian's ``docker-compose`` (engine-free) and checks the HAProxy configs; the assertions
below read the resolved configuration with PyYAML. The setup script runs against a small
fake CouchDB on loopback addresses.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GATEWAY_IMAGE = "wallaby-gateway:local"
# Variables of the official couchdb image (plus Erlang's own), not of the gateway.
COUCHDB_IMAGE_VARS = {
    "COUCHDB_USER", "COUCHDB_PASSWORD", "COUCHDB_SECRET", "COUCHDB_ERLANG_COOKIE",
    "NODENAME", "ERL_FLAGS",
}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|ERLANG_COOKIE")

pytestmark = pytest.mark.timeout(60)


def settings_env_names() -> set[str]:
    return {Settings.env_name(f.name) for f in fields(Settings) if not f.name.startswith("_")}


# ------------------------------------------------------------------ validator + config


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The validator's output: the resolved compose config of each profile."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (CI installs it: apt-get install "
                    "docker-compose); deploy/validate.sh cannot run")
    out = tmp_path_factory.mktemp("compose")
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "validate.sh"), "--no-install", "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deployment files valid" in result.stdout
    return {
        profile: yaml.safe_load((out / f"compose-{profile}.yml").read_text())
        for profile in ("default", "cluster")
    }


def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(config: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """Services enabled under ``profile`` (None: the default, no profile)."""
    return {
        name: svc for name, svc in config["services"].items()
        if not svc.get("profiles") or (profile is not None and profile in svc["profiles"])
    }


def is_gateway(svc: dict[str, Any]) -> bool:
    return svc.get("image") == GATEWAY_IMAGE and "entrypoint" not in svc


def is_couchdb(svc: dict[str, Any]) -> bool:
    return str(svc.get("image", "")).startswith("couchdb:3")


def test_validator_passes(resolved: dict[str, dict[str, Any]]) -> None:
    for config in resolved.values():
        assert "services" in config


def test_default_stack(resolved: dict[str, dict[str, Any]]) -> None:
    default = services(resolved["default"], None)
    assert set(default) == {"couchdb", "couchdb-setup", "gateway"}
    gateway = default["gateway"]
    assert gateway["depends_on"]["couchdb"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["couchdb-setup"]["condition"] == (
        "service_completed_successfully")
    assert gateway["environment"]["COUCHDB_URL"] == "http://couchdb:5984"
    assert gateway["environment"]["WALLABY_HOST"] == "0.0.0.0"
    assert gateway["ports"] and all(p.startswith("127.0.0.1:") for p in gateway["ports"])
    assert "ports" not in default["couchdb"], "CouchDB must not be published"
    setup = default["couchdb-setup"]
    assert setup["depends_on"]["couchdb"]["condition"] == "service_healthy"
    assert setup["restart"] == "no"
    assert setup["entrypoint"][-1] == "/app/deploy/couchdb_setup.py"


def test_couchdb_healthchecks_and_persistent_volumes(resolved: dict[str, Any]) -> None:
    config = resolved["cluster"]
    couches = {n: s for n, s in config["services"].items() if is_couchdb(s)}
    assert len(couches) == 4  # the single node and three cluster nodes
    named_volumes = set(config.get("volumes", {}))
    for name, svc in couches.items():
        assert "/_up" in " ".join(svc["healthcheck"]["test"]), name
        mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}"
                  for v in svc["volumes"]]
        data = [m for m in mounts if m.split(":")[1] == "/opt/couchdb/data"]
        assert data, f"{name}: no volume on /opt/couchdb/data"
        assert data[0].split(":")[0] in named_volumes, f"{name}: data not on a named volume"
    sources = [svc["volumes"][0].split(":")[0] for svc in couches.values()]
    assert len(set(sources)) == len(sources), "each node needs its own volume"


def test_cluster_profile(resolved: dict[str, dict[str, Any]]) -> None:
    cluster = {n: s for n, s in resolved["cluster"]["services"].items()
               if "cluster" in s.get("profiles", [])}
    nodes = {n: s for n, s in cluster.items() if is_couchdb(s)}
    assert len(nodes) == 3
    names = {s["environment"]["NODENAME"] for s in nodes.values()}
    assert len(names) == 3 and all("." in n for n in names), names
    for svc in nodes.values():
        aliases = svc["networks"]["default"]["aliases"]
        assert svc["environment"]["NODENAME"] in aliases
        assert "-setcookie" in svc["environment"]["ERL_FLAGS"]
    for key in ("COUCHDB_SECRET", "COUCHDB_ERLANG_COOKIE", "COUCHDB_PASSWORD"):
        assert len({s["environment"][key] for s in nodes.values()}) == 1, key

    setup = cluster["couchdb-cluster-setup"]
    urls = setup["environment"]["COUCHDB_NODES"].split(",")
    assert {u.split("//")[1].split(":")[0] for u in urls} == names
    assert all(setup["depends_on"][n]["condition"] == "service_healthy" for n in nodes)

    gateways = {n: s for n, s in cluster.items() if is_gateway(s)}
    assert len(gateways) >= 2
    for svc in gateways.values():
        assert svc["environment"]["COUCHDB_URL"] == "http://couchdb-lb:5984"
        assert svc["depends_on"]["couchdb-cluster-setup"]["condition"] == (
            "service_completed_successfully")
        assert "ports" not in svc, "replicas are reached through the load balancer only"

    lb = cluster["lb"]
    assert lb["image"].startswith("haproxy:")
    assert lb["ports"] and all(p.startswith("127.0.0.1:") for p in lb["ports"])
    assert set(lb["depends_on"]) == set(gateways)
    assert cluster["couchdb-lb"]["image"].startswith("haproxy:")

    public = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert re.search(r"^\s*timeout tunnel\s+\S+", public, re.M)
    assert re.search(r"http-check send meth GET uri /ready", public)
    servers = re.findall(r"^\s*server\s+\S+\s+([\w.-]+):8080", public, re.M)
    assert sorted(servers) == sorted(gateways)
    internal = (ROOT / "deploy" / "haproxy-couchdb.cfg").read_text()
    assert re.search(r"http-check send meth GET uri /_up", internal)
    servers = re.findall(r"^\s*server\s+\S+\s+([\w.-]+):5984", internal, re.M)
    assert sorted(servers) == sorted(names)


#: Read only by deploy/couchdb_setup.py (the one-shot setup service).
SETUP_VARS = {"COUCHDB_NODES", "COUCHDB_JWT_KEYS"}


def test_compose_variables_exist_in_settings(resolved: dict[str, dict[str, Any]]) -> None:
    known = settings_env_names()
    config = resolved["cluster"]
    for name, svc in config["services"].items():
        env = svc.get("environment", {})
        if svc.get("image") == GATEWAY_IMAGE:
            for key in env:
                if key.startswith(("WALLABY_", "COUCHDB_")) and key not in SETUP_VARS:
                    assert key in known, f"{name}: {key} is not a Settings variable"
        elif is_couchdb(svc):
            assert set(env) <= COUCHDB_IMAGE_VARS, f"{name}: {set(env) - COUCHDB_IMAGE_VARS}"
    interpolated = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    for var in interpolated:
        if var.startswith("WALLABY_"):
            assert var in known, f"${{{var}}} is not a Settings variable"
        elif var.startswith("COUCHDB_"):
            assert var in known | COUCHDB_IMAGE_VARS | SETUP_VARS, var
    example = dotenv(ROOT / ".env.example")
    assert interpolated <= set(example), f"missing in .env.example: {interpolated - set(example)}"


def dotenv(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# ------------------------------------------------------------------ static checks


def test_no_secret_values_committed() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    env_files = [p for p in tracked if Path(p).name.startswith(".env")]
    assert env_files in ([], [".env.example"]), env_files
    for key, value in dotenv(ROOT / ".env.example").items():
        if SECRET_KEY.search(key) and value:
            assert value == "change-me", f".env.example: {key} must be a placeholder"
    # In the compose file every secret comes from .env, mandatory and without a default.
    for name, svc in raw_compose()["services"].items():
        env = svc.get("environment", {}) or {}
        for key, value in env.items():
            if SECRET_KEY.search(key) and key != "DEMO_PASSWORD":
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), (
                    f"{name}: {key} must be ${{VAR:?...}} from .env")
    ignored = dockerignore()
    assert ".env" in ignored and ignored[0] == "*"


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerfile() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile() -> None:
    lines = dockerfile()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and all("-slim" in line for line in stages)
    final = lines[lines.index(stages[-1]):]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") and "/health" in line for line in final)
    entry = next(line for line in final if line.startswith("ENTRYPOINT "))
    assert json.loads(entry.split(" ", 1)[1]) == ["python", "-m", "gateway"], "exec form"
    for line in final:
        if line.startswith(("ENV ", "ARG ")):
            assert not SECRET_KEY.search(line), f"no secrets in the image: {line}"
    # Everything COPY'd from the context exists and is not excluded by .dockerignore.
    allowed = [p.lstrip("!").rstrip("/") for p in dockerignore() if p.startswith("!")]
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                if src.endswith("*"):
                    continue
                assert (ROOT / src).exists(), src
                assert any(src == a or src.startswith(a + "/") for a in allowed), src


# ------------------------------------------------------------------ one-shot setup script


#: A status meaning: close the connection without an answer.
CUT = -1


class FakeCouch:
    """Just enough of CouchDB's setup, config, membership and database API.

    Like CouchDB, it restarts its HTTP listener when a setup action changes
    ``bind_address`` (the official image starts with ``any``): the connection that
    asked, and the next two, are cut without an answer.
    """

    def __init__(self, host: str, cluster: dict[str, Any]) -> None:
        self.host = host
        self.cluster = cluster  # shared between the nodes of one fake cluster
        self.state = "cluster_disabled"
        self.config: dict[str, str] = {"admins/admin": f"-pbkdf2-{host},salt,10"}
        self.dbs: set[str] = set()
        self.docs: dict[str, Any] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.bind_address = "any"
        self.restarts = 0
        self._cut = 0

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.calls.append((method, path, body))
        if self._cut:
            self._cut -= 1
            return CUT, None
        if path == "/_up":
            return 200, {"status": "ok"}
        if path == "/_cluster_setup" and method == "GET":
            return 200, {"state": self.state}
        if path == "/_cluster_setup":
            answer = self._setup(body)
            wanted = body.get("bind_address") if "remote_node" not in body else None
            if wanted is not None and wanted != self.bind_address:
                self.bind_address, self._cut = wanted, 2
                self.restarts += 1
                return CUT, None
            return answer
        if path == "/_membership":
            members = sorted(self.cluster["members"])
            return 200, {"all_nodes": members, "cluster_nodes": members}
        if path.startswith("/_node/_local/_config/"):
            key = path.removeprefix("/_node/_local/_config/")
            if method == "PUT":
                old = self.config.get(key, "")
                self.config[key] = body
                return 200, old
            return (200, self.config[key]) if key in self.config else (404, {})
        if path.startswith("/_users/"):
            if method == "PUT":
                self.docs[path] = body
                return 201, {"ok": True}
            return (200, self.docs[path]) if path in self.docs else (404, {})
        if method == "PUT" and path.count("/") == 1:
            if path[1:] in self.dbs:
                return 412, {"error": "file_exists"}
            self.dbs.add(path[1:])
            return 201, {"ok": True}
        return 404, {"error": "not_found"}

    def _setup(self, body: dict[str, Any]) -> tuple[int, Any]:
        action = body["action"]
        if action == "enable_single_node":
            self.state = "single_node_enabled"
            self.dbs |= {"_users", "_replicator"}
        elif action == "enable_cluster":
            if "remote_node" not in body:
                if self.state != "cluster_disabled":
                    return 400, {"reason": "Cluster is already enabled"}
                self.state = "cluster_enabled"
                self.cluster["members"].add(f"couchdb@{self.host}")
        elif action == "add_node":
            self.cluster["members"].add(f"couchdb@{body['host']}")
        elif action == "finish_cluster":
            if self.state == "cluster_finished":
                return 400, {"reason": "Cluster is already finished"}
            self.state = "cluster_finished"
            self.dbs |= {"_users", "_replicator"}
        return 201, {"ok": True}


@pytest.fixture
def fake_nodes() -> Iterator[list[tuple[str, FakeCouch]]]:
    cluster: dict[str, Any] = {"members": set()}
    servers = []
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        node = FakeCouch(host, cluster)

        class Handler(BaseHTTPRequestHandler):
            couch = node

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                assert self.headers["Authorization"].startswith("Basic ")
                status, doc = self.couch.handle(self.command, self.path, body)
                if status == CUT:
                    self.close_connection = True
                    return
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_PUT = do_POST = _serve  # noqa: N815 (http.server's names)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, node))
    yield [(f"http://{s.server_address[0]}:{s.server_address[1]}", n) for s, n in servers]
    for server, _ in servers:
        server.shutdown()
        server.server_close()


def run_setup(env: dict[str, str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("couchdb_setup",
                                                  ROOT / "deploy" / "couchdb_setup.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(env))


def test_setup_single_node_is_idempotent(fake_nodes: list[tuple[str, FakeCouch]]) -> None:
    url, node = fake_nodes[0]
    env = {"COUCHDB_NODES": url, "COUCHDB_USER": "admin", "COUCHDB_PASSWORD": "pw",
           "WALLABY_AUTH_MODE": "proxy", "DEMO_USER": "demo", "DEMO_PASSWORD": "demo-pw",
           "SETUP_TIMEOUT": "5"}
    assert run_setup(env) == 0
    assert node.state == "single_node_enabled" and node.restarts == 1
    assert {"_users", "_replicator", "_global_changes"} <= node.dbs
    assert "proxy_authentication_handler" in node.config["chttpd/authentication_handlers"]
    # Only headers signed with the shared secret are trusted (CouchDB's default: any).
    assert node.config["chttpd_auth/proxy_use_secret"] == "true"
    assert node.docs["/_users/org.couchdb.user%3Ademo"]["roles"] == []
    actions = [c[2]["action"] for c in node.calls if c[1] == "/_cluster_setup" and c[2]]
    assert run_setup(env) == 0  # second run: nothing to do, still succeeds
    again = [c[2]["action"] for c in node.calls if c[1] == "/_cluster_setup" and c[2]]
    assert actions == again == ["enable_single_node"]


def test_setup_cluster(fake_nodes: list[tuple[str, FakeCouch]]) -> None:
    env = {"COUCHDB_NODES": ",".join(url for url, _ in fake_nodes), "COUCHDB_USER": "admin",
           "COUCHDB_PASSWORD": "pw", "SETUP_TIMEOUT": "5"}
    assert run_setup(env) == 0
    coordinator = fake_nodes[0][1]
    assert coordinator.state == "cluster_finished" and coordinator.restarts == 1
    assert coordinator.cluster["members"] == {f"couchdb@127.0.0.{i}" for i in (1, 2, 3)}
    actions = [c[2]["action"] for c in coordinator.calls if c[1] == "/_cluster_setup" and c[2]]
    assert actions == ["enable_cluster", "enable_cluster", "add_node", "enable_cluster",
                       "add_node", "finish_cluster"]
    hashes = {node.config["admins/admin"] for _, node in fake_nodes}
    assert hashes == {coordinator.config["admins/admin"]}
    assert run_setup(env) == 0  # idempotent


def test_setup_jwt_mode_enables_the_handler_with_the_given_keys(
    fake_nodes: list[tuple[str, FakeCouch]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, node = fake_nodes[0]
    env = {"COUCHDB_NODES": url, "COUCHDB_USER": "admin", "COUCHDB_PASSWORD": "pw",
           "WALLABY_AUTH_MODE": "jwt", "SETUP_TIMEOUT": "5",
           "COUCHDB_JWT_KEYS": "hmac:_default=c2VjcmV0LWtleQ==; rsa:idp1=-----BEGIN KEY-----x"}
    assert run_setup(env) == 0
    handlers = node.config["chttpd/authentication_handlers"]
    assert handlers.startswith("{chttpd_auth, jwt_authentication_handler}")
    assert node.config["jwt_keys/hmac:_default"] == "c2VjcmV0LWtleQ=="
    assert node.config["jwt_keys/rsa:idp1"] == "-----BEGIN KEY-----x"
    assert node.config["jwt_auth/required_claims"] == "exp"
    assert "c2VjcmV0LWtleQ" not in capsys.readouterr().out  # names logged, never keys
    without_keys = {k: v for k, v in env.items() if k != "COUCHDB_JWT_KEYS"}
    assert run_setup(without_keys) == 1
    assert run_setup({**env, "COUCHDB_JWT_KEYS": "no-equals-sign"}) == 1


def test_setup_refuses_missing_credentials() -> None:
    assert run_setup({"COUCHDB_NODES": "http://127.0.0.1:9"}) == 1
