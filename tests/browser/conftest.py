"""Browser tests: each test's node scripts keep their temporary files in a folder of its own.

A script's Chromium profile (``harness.mjs``, under ``os.tmpdir()``) is removed by the
script when it ends, but a test that fails kills the script first, and the profile (a few
MB) stayed in /tmp for good. The folder goes when the test ends, the script with it. It
is short-named in /tmp, not the test's ``tmp_path``: Chromium puts a Unix socket in the
profile, and such a path is limited to 107 bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _node_temporary_files_of_its_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    folder = tempfile.mkdtemp(prefix="wallaby-browser-")
    monkeypatch.setenv("TMPDIR", folder)
    yield
    shutil.rmtree(folder, ignore_errors=True)
