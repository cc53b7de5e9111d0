"""JSON nested deeper than Python's recursion limit, up to a documented depth.

CouchDB stores documents nested as deep as their size allows (its parser keeps an
explicit stack), and such documents reach the gateway by replication or from any other
client. Python's ``json`` recurses once per level and refuses past the interpreter's
recursion limit (about 1,000 levels, less whatever the caller's stack holds). Here a
refusal is retried with room for the value's real depth, up to :data:`MAX_DEPTH`
levels: about 1.6 MB of C stack, well within the main thread's 8 MB. Deeper values are
refused with :class:`NestedTooDeep`, which names the limit.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["MAX_DEPTH", "NestedTooDeep", "dumps", "loads"]

#: The deepest nesting the gateway reads and writes (CouchDB has no such limit).
MAX_DEPTH = 10_000

_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class NestedTooDeep(ValueError):
    """A JSON value nested deeper than :data:`MAX_DEPTH` levels."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")


def loads(data: str | bytes, **options: Any) -> Any:
    """``json.loads`` for values nested up to :data:`MAX_DEPTH` levels.

    Raises:
        NestedTooDeep: Nested deeper.
        ValueError: Not JSON.
    """
    try:
        return json.loads(data, **options)
    except RecursionError:
        pass
    depth = _depth(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if depth > MAX_DEPTH:
        raise NestedTooDeep
    with _room(depth):
        return json.loads(data, **options)


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` for values nested up to :data:`MAX_DEPTH` levels.

    Raises:
        NestedTooDeep: Nested deeper.
    """
    try:
        return json.dumps(value, **options)
    except RecursionError:
        pass
    with _room(MAX_DEPTH):
        try:
            return json.dumps(value, **options)
        except RecursionError:
            raise NestedTooDeep from None


def _depth(data: bytes) -> int:
    """How deep arrays and objects nest in ``data`` (strings skipped); stops past the limit."""
    depth = deepest = 0
    for token in _TOKENS.finditer(data):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        elif bracket in (b"]", b"}"):
            depth -= 1
    return deepest


@contextmanager
def _room(depth: int) -> Iterator[None]:
    """Raise the recursion limit by ``depth`` levels (and some) for the block."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(before + depth + 64)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)
