"""The wheel carries its contract and static files; the contract is found in the package."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    return next(out.glob("wallaby_gateway-*.whl"))


def test_wheel_ships_contract_and_static_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    # The contract is package data (found next to the code, wherever pip installs it),
    # not data-files under the install scheme's data path.
    assert not [n for n in names if ".data/" in n]
    assert "gateway/api_schema/openapi.yaml" in names
    assert "gateway/api_schema/asyncapi.yaml" in names
    shipped_ws = {Path(n).name for n in names if n.startswith("gateway/api_schema/ws/")}
    assert shipped_ws == {p.name for p in (ROOT / "api_schema" / "ws").glob("*.json")}
    assert "gateway/static/wallaby.js" in names and "gateway/static/index.html" in names
    assert "gateway/py.typed" in names
    assert "gateway/embedded_watchdog.js" in names


def test_wheel_carries_the_license_text(wheel: Path) -> None:
    """pyproject declares ``license = "MIT"``, whose terms require the copyright and
    permission notice to accompany every copy: the wheel carries LICENSE."""
    names = zipfile.ZipFile(wheel).namelist()
    licenses = [n for n in names if ".dist-info/licenses/" in n or
                Path(n).name.upper().startswith(("LICENSE", "LICENCE", "COPYING"))]
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert licenses and "License-File:" in metadata, (
        f"no license text in {wheel.name}; License-Expression: MIT declared")
    text = zipfile.ZipFile(wheel).read(licenses[0]).decode()
    assert "MIT License" in text and "the Wallaby Gateway authors" in text


def _schema_dir(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    code = "import gateway.schemas as s; print(s.api_schema_dir())"
    environ = {k: v for k, v in os.environ.items() if k != "WALLABY_API_SCHEMA_DIR"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={**environ, **env}, check=False)


def test_contract_is_found_in_the_package(tmp_path: Path) -> None:
    """The package's own ``api_schema`` (a symlink to the checkout's in a checkout)."""
    run = _schema_dir(tmp_path)
    assert run.returncode == 0, run.stderr
    found = Path(run.stdout.strip())
    assert found == ROOT / "gateway" / "api_schema"
    assert found.resolve() == (ROOT / "api_schema").resolve()


def test_api_schema_dir_override(tmp_path: Path) -> None:
    target = tmp_path / "contract"
    target.mkdir()
    (target / "openapi.yaml").write_text("openapi: 3.1.0\n")
    run = _schema_dir(tmp_path, WALLABY_API_SCHEMA_DIR=str(target))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(target)


def test_api_schema_dir_override_without_the_contract_is_an_error(tmp_path: Path) -> None:
    """A wrong ``WALLABY_API_SCHEMA_DIR`` stops with its name, not a silent fallback."""
    run = _schema_dir(tmp_path, WALLABY_API_SCHEMA_DIR=str(tmp_path / "nothing-here"))
    assert run.returncode != 0
    assert "WALLABY_API_SCHEMA_DIR" in run.stderr, run.stderr


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_of_the_package_is_a_declared_dependency() -> None:
    """What gateway/ imports is declared (directly, or by an extra it declares, as
    ``twisted[tls]`` brings pyOpenSSL and service_identity), not merely installed by
    another package's requirements."""
    declared: set[str] = set()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        declared.add(_normalized(requirement.name))
        for extra in requirement.extras:
            for sub in map(Requirement, metadata.requires(requirement.name) or []):
                if sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                    declared.add(_normalized(sub.name))
    providers = metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("gateway", "__future__"):
                    continue
                dists = {_normalized(d) for d in providers.get(top, [top])}
                if not dists & declared:
                    missing.setdefault(top, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
