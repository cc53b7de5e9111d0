"""The README documents every setting the gateway reads, and its example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from gateway.config import Settings
from tests.conftest import CouchBackend, unique_name

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
CONFIGURATION = README[README.index("## Configuration"):README.index("## Project layout")]


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    missing = [Settings.env_name(f.name) for f in fields(Settings)
               if not f.name.startswith("_")
               and f"| `{Settings.env_name(f.name)}` |" not in CONFIGURATION]
    assert not missing, f"undocumented settings: {missing}"


def _documented_defaults() -> dict[str, str]:
    """Variable -> the first `code` value of its README default column (if it has one)."""
    found = {}
    for match in re.finditer(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", CONFIGURATION, re.M):
        value = re.match(r"\s*`([^`]*)`", match.group(2))
        if value is not None:
            found[match.group(1)] = value.group(1)
    return found


def test_every_default_is_the_one_the_readme_table_documents() -> None:
    documented = _documented_defaults()
    checked, wrong = 0, []
    for spec in fields(Settings):
        if spec.name.startswith("_"):
            continue
        variable = Settings.env_name(spec.name)
        if variable not in documented:
            continue  # "—", "*(none)*", "*(system roots)*": no value to compare
        checked += 1
        default = getattr(Settings(), spec.name)
        if Settings.parse(spec.name, documented[variable]) != default:
            wrong.append((variable, documented[variable], default))
    assert not wrong, f"README default differs from the code: {wrong}"
    assert checked >= 35, checked  # the table was really read


def test_the_readme_table_defaults_parse_into_the_default_settings() -> None:
    # The same, from the other side: setting every documented default changes nothing.
    documented = {name: value for name, value in _documented_defaults().items()
                  if name.startswith("WALLABY_") and name not in (
                      "WALLABY_POUCHDB_SERVER", "WALLABY_API_SCHEMA_DIR",
                      "WALLABY_EMBEDDED_ADMIN_PASSWORD")}
    assert Settings.from_env(documented) == Settings()


def test_readme_names_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
    # The fresh-machine commands, and CI runs the README's test command.
    root = Path(__file__).resolve().parent.parent
    assert "```bash\n./wallaby run\n```" in README and "```bash\n./wallaby test\n```" in README
    assert os.access(root / "wallaby", os.X_OK)
    assert "./wallaby test" in (root / ".ci" / "run").read_text()


def test_the_readme_client_example_runs(couch_backend: CouchBackend, tmp_path: Path) -> None:
    """The client example of the README, as printed, against the test server (its URL,
    admin and a database of its own substituted); run twice, as a reader would."""
    start = README.index("## The CouchDB client")
    block = README[start:].split("```python\n", 1)[1].split("```", 1)[0]
    name = unique_name("readme")
    script = (block.replace('"http://127.0.0.1:5984"', repr(couch_backend.url))
              .replace('username="admin", password="admin"',
                       f"username={couch_backend.admin_username!r}, "
                       f"password={couch_backend.admin_password!r}")
              .replace('Database("todo"', f'Database("{name}"'))
    assert script.count(name) == 1 and couch_backend.url in script
    path = tmp_path / "example.py"
    path.write_text(script)
    try:
        for _ in range(2):
            run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                                 timeout=60, check=False)
            assert run.returncode == 0, run.stderr
            lines = run.stdout.splitlines()
            assert lines[0].startswith("409 conflict")
            assert lines[1] == "b'oat milk'"
            assert lines[2].endswith("['milk']")
            assert lines[3] == "changed: ['bread']"
    finally:
        subprocess.run([sys.executable, "-c", (
            "import urllib.request, base64;"
            f"r = urllib.request.Request({couch_backend.url + '/' + name!r}, method='DELETE');"
            "r.add_header('Authorization', 'Basic ' + base64.b64encode("
            f"{(couch_backend.admin_username + ':' + couch_backend.admin_password)!r}"
            ".encode()).decode());"
            "urllib.request.urlopen(r)")], check=False, capture_output=True, timeout=30)


def test_wallaby_passes_options_to_the_command_not_to_make() -> None:
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([str(root / "wallaby"), "run", "--help"], capture_output=True,
                         text=True, timeout=300, check=False, cwd=root)
    assert run.returncode == 0, run.stderr
    assert "--couch-port" in run.stdout  # the gateway's own help, not make's
