"""The one place outside the entry point that may fall back to the global reactor.

``Database(name, username=, password=, url=)`` is the original Wallaby API, used by
scripts that never heard of reactor injection. Everything in the gateway itself passes
its reactor explicitly; only that legacy convenience lands here.
"""

from __future__ import annotations

from typing import cast

from gateway.couch.transport import Reactor

__all__ = ["default_reactor"]


def default_reactor() -> Reactor:
    """The global Twisted reactor, imported lazily."""
    from twisted.internet import reactor

    return cast(Reactor, reactor)
