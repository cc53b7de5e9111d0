"""The absolute form of a request target, as RFC 9112 section 3.2.2 has servers accept it.

Clients speaking to a proxy send ``GET http://host:port/path?q HTTP/1.1``; some do so to
origin servers too, which "MUST accept the absolute-form". The gateway serves it as the
origin form (``/path?q``) with the target's authority as ``Host`` (the received ``Host``
is ignored, as section 3.2.2 says).
"""

from __future__ import annotations

import re

__all__ = ["origin_form"]

# The scheme is case-insensitive; the authority has no userinfo (RFC 9110 4.2.4 has a
# recipient treat one as an error) and is not empty.
_ABSOLUTE = re.compile(rb"^[Hh][Tt][Tt][Pp][Ss]?://([^/?#@]+)([/?][^#]*)?$")


def origin_form(target: bytes) -> tuple[bytes, bytes] | None:
    """Split an absolute-form target into ``(origin-form target, authority)``.

    Args:
        target: The request target as it came.

    Returns:
        ``None`` unless ``target`` is an ``http``/``https`` URI with a host and no
        userinfo; then its path and query (``/`` when it has no path) and its authority.
    """
    match = _ABSOLUTE.match(target)
    if match is None:
        return None
    rest = match.group(2) or b"/"
    return (rest if rest.startswith(b"/") else b"/" + rest), match.group(1)
