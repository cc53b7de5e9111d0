"""Returning Deferreds from ``async def`` methods (the client's public edge)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred

__all__ = ["returns_deferred"]

P = ParamSpec("P")
T = TypeVar("T")


def returns_deferred(
    function: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Deferred[T]]:
    """Wrap a coroutine function so that calling it returns a ``Deferred``.

    The result works with ``yield`` in ``inlineCallbacks`` and with ``await``, and
    cancelling it cancels whatever the coroutine is waiting on.
    """

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(function(*args, **kwargs))

    return wrapper
