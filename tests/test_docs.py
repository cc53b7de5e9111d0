"""The README documents every setting the gateway reads."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from gateway.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    table = README[README.index("## Configuration"):README.index("## Project layout")]
    missing = [Settings.env_name(f.name) for f in fields(Settings)
               if not f.name.startswith("_") and f"| `{Settings.env_name(f.name)}` |" not in table]
    assert not missing, f"undocumented settings: {missing}"


def test_readme_names_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
    # The fresh-machine commands, and CI runs the README's test command.
    root = Path(__file__).resolve().parent.parent
    assert "```bash\n./wallaby run\n```" in README and "```bash\n./wallaby test\n```" in README
    assert os.access(root / "wallaby", os.X_OK)
    assert "./wallaby test" in (root / ".ci" / "run").read_text()
