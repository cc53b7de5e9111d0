"""Where the API contract lives: ``gateway/api_schema/``, in a checkout and installed alike.

The OpenAPI document and the WebSocket message schemas are data the gateway loads at
start-up. Their one copy is the checkout's top-level ``api_schema/`` folder;
``gateway/api_schema`` is a symlink to it, so the wheel carries the contract as package
data (``[tool.setuptools.package-data]``) and it is found next to the code wherever pip
puts that (a venv, ``--user``, ``--prefix``, ``--target``, Debian's ``/usr/local``).
``WALLABY_API_SCHEMA_DIR`` overrides the location.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

__all__ = ["api_schema_dir"]

_VARIABLE = "WALLABY_API_SCHEMA_DIR"
_PACKAGED = Path(__file__).resolve().parent / "api_schema"


@cache
def api_schema_dir() -> Path:
    """The folder holding ``openapi.yaml``, ``asyncapi.yaml`` and ``ws/``.

    Raises:
        FileNotFoundError: ``WALLABY_API_SCHEMA_DIR`` names a folder without the
            contract, or (unset) the package's copy is missing.
    """
    override = os.environ.get(_VARIABLE)
    if override:
        if not (Path(override) / "openapi.yaml").is_file():
            raise FileNotFoundError(
                f"{_VARIABLE}: the API contract (openapi.yaml) is not in {override}")
        return Path(override)
    if not (_PACKAGED / "openapi.yaml").is_file():
        raise FileNotFoundError(
            f"the API contract (openapi.yaml) is not in {_PACKAGED} (an incomplete "
            f"install?): set {_VARIABLE} to the folder holding it")
    return _PACKAGED
