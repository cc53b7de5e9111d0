"""Where the API contract lives: ``api_schema/`` in a checkout, or the installed copy.

The OpenAPI document and the WebSocket message schemas are data the gateway loads at
start-up. In a source checkout they are the top-level ``api_schema/`` folder; an
installed package (e.g. the Docker image) carries them under
``<prefix>/share/wallaby-gateway/api_schema`` (see ``[tool.setuptools.data-files]``).
``WALLABY_API_SCHEMA_DIR`` overrides both.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

__all__ = ["api_schema_dir"]


@cache
def api_schema_dir() -> Path:
    """The folder holding ``openapi.yaml``, ``asyncapi.yaml`` and ``ws/``.

    Raises:
        FileNotFoundError: No copy of the contract was found.
    """
    override = os.environ.get("WALLABY_API_SCHEMA_DIR")
    candidates = [Path(override)] if override else []
    candidates.append(Path(__file__).resolve().parent.parent / "api_schema")
    candidates.append(Path(sys.prefix) / "share" / "wallaby-gateway" / "api_schema")
    for candidate in candidates:
        if (candidate / "openapi.yaml").is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"the API contract (openapi.yaml) is in none of: {searched}")
