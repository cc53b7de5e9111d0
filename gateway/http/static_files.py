"""The demo page's static files: where they live, and how ``/static/`` serves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.web.resource import Resource
from twisted.web.static import File

from gateway.errors import RouteNotFound
from gateway.http.responses import render_error

__all__ = ["PAGE_HEADERS", "STATIC_DIR", "StaticFiles", "page_headers"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

#: Headers of the demo page (``/``) and its files (``/static/``). Only this origin may
#: frame them: a signed-in page in another site's frame is clickjacking bait (its delete
#: buttons), and the session cookie is sent to another port of the same host. The page
#: loads nothing from elsewhere (``'self'`` covers the same host's WebSocket too; its
#: empty ``data:`` icon keeps browsers from asking for ``/favicon.ico``), names itself to
#: no other origin, and is revalidated before each use (they have
#: ``Last-Modified``), so an upgrade never pairs a cached ``wallaby.js`` with a new page.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def page_headers(request: Any) -> None:
    """Set :data:`PAGE_HEADERS` on ``request`` (replacing the site's ``no-store``)."""
    for name, value in PAGE_HEADERS.items():
        request.setHeader(name, value)


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
