"""The demo page's static files: where they live, and how ``/static/`` serves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.web.resource import Resource
from twisted.web.static import File

from gateway.errors import RouteNotFound
from gateway.http.responses import render_error

__all__ = ["STATIC_DIR", "StaticFiles"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class _Missing(Resource):
    """A missing static file, answered with the error envelope."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: Any) -> bytes:
        """404 in the envelope."""
        return render_error(request, RouteNotFound("no such file"))


class StaticFiles(File):
    """``/static/``: files only (no directory listings), errors in the envelope."""

    childNotFound: Any = _Missing()  # noqa: N815 - Twisted's name
    forbidden: Any = _Missing()

    def directoryListing(self) -> Any:  # noqa: N802 - Twisted's name
        """No listings."""
        return self.childNotFound
