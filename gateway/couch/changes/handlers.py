"""Calling user-supplied change handlers without letting them break a feed."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["call_handler"]

_log = Logger(namespace="gateway.couch.changes")


def call_handler(
    handler: Callable[..., Any], *args: Any, what: str, db: str, **kwargs: Any
) -> Deferred[Any] | None:
    """Call a changes handler; return what it still has to finish, if anything.

    A handler may return nothing, a Deferred or a coroutine (turned into a Deferred).
    Its failures, raised or asynchronous, are logged and never propagate: one bad
    handler must not stop a feed other handlers rely on.

    Args:
        handler: The callable.
        *args: Its positional arguments.
        what: How the log names the handler (e.g. ``"changes handler"``).
        db: The database, for the log.
        **kwargs: Its keyword arguments.

    Returns:
        A Deferred that has not fired yet (the caller may wait on it for backpressure),
        or ``None`` when the handler is done.
    """
    try:
        result = handler(*args, **kwargs)
    except Exception:
        _log.failure("{what} of {db} failed", what=what, db=db)
        return None
    if inspect.iscoroutine(result):
        result = Deferred.fromCoroutine(result)
    if not isinstance(result, Deferred):
        return None
    result.addErrback(lambda f: _log.failure("{what} of {db} failed", f, what=what, db=db))
    return None if result.called else result
