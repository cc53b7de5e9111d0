"""The installed package (as in the Docker image) carries its contract and static files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_contract_and_static_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("wallaby_gateway-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [n for n in names if ".data/data/share/wallaby-gateway/api_schema/" in n]
    assert any(n.endswith("/api_schema/openapi.yaml") for n in data)
    assert any(n.endswith("/api_schema/asyncapi.yaml") for n in data)
    shipped_ws = {Path(n).name for n in data if "/api_schema/ws/" in n}
    assert shipped_ws == {p.name for p in (ROOT / "api_schema" / "ws").glob("*.json")}
    assert "gateway/static/wallaby.js" in names and "gateway/static/index.html" in names
    assert "gateway/py.typed" in names
    assert "gateway/embedded_watchdog.js" in names


def test_installed_layout_finds_the_contract(tmp_path: Path) -> None:
    """Outside a checkout the contract is found under <prefix>/share, as pip installs it."""
    prefix = tmp_path / "prefix"
    target = prefix / "share" / "wallaby-gateway" / "api_schema"
    (target / "ws").mkdir(parents=True)
    (target / "openapi.yaml").write_text("openapi: 3.1.0\n")
    code = (
        "import sys; sys.prefix = sys.argv[1]\n"
        "import gateway.schemas as s, pathlib\n"
        "s.__file__ = '/nonexistent/gateway/schemas.py'\n"
        "print(s.api_schema_dir())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(prefix)], check=True,
                         capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert out == str(target)
