"""JSON nested deeper than Python's recursion limit, up to a documented depth.

CouchDB stores documents nested as deep as their size allows (its parser keeps an
explicit stack), and such documents reach the gateway by replication or from any other
client. Python's ``json`` recurses once per level and refuses past the interpreter's
recursion limit (about 1,000 levels, less whatever the caller's stack holds). Here a
refusal is retried with room for the value's real depth, up to :data:`MAX_DEPTH`
levels, through Python's pure-Python scanner (Python frames, no C stack) and a loop of
this module's for writing: from Python 3.12 on the C parts have a fixed depth of their
own (about 1,500 levels). Deeper values are refused with :class:`NestedTooDeep`, which
names the limit.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from json.encoder import encode_basestring, encode_basestring_ascii
from json.scanner import py_make_scanner  # type: ignore[attr-defined]
from typing import Any

__all__ = ["MAX_DEPTH", "NestedTooDeep", "dumps", "loads"]

#: The deepest nesting the gateway reads and writes (CouchDB has no such limit).
MAX_DEPTH = 10_000

# A string's closing quote is optional: an unterminated one is consumed once, to the end
# (required, every escaped quote in it would start a scan to the end: quadratic).
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


class NestedTooDeep(ValueError):
    """A JSON value nested deeper than :data:`MAX_DEPTH` levels."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")


def loads(data: str | bytes, **options: Any) -> Any:
    """``json.loads`` for values nested up to :data:`MAX_DEPTH` levels.

    Args:
        data: The JSON text.
        options: What ``json.JSONDecoder`` takes (``parse_float``, ``parse_constant`` …).

    Raises:
        NestedTooDeep: Nested deeper.
        ValueError: Not JSON.
    """
    try:
        return json.loads(data, **options)
    except RecursionError:
        pass
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise NestedTooDeep
    text = data if isinstance(data, str) else data.decode(json.detect_encoding(data),
                                                          "surrogatepass")
    # The C scanner's depth has a fixed ceiling from Python 3.12 on (about 1,500 levels);
    # the pure-Python one recurses in Python frames only, which the raised limit admits.
    decoder = json.JSONDecoder(**options)
    decoder.scan_once = py_make_scanner(decoder)  # type: ignore[attr-defined]
    with _room(3 * depth):  # two frames a level
        try:
            return decoder.decode(text)
        except RecursionError:
            raise NestedTooDeep from None


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` for values nested up to :data:`MAX_DEPTH` levels.

    Past the C encoder's depth the value is written by a loop of this module's (only
    ``separators``, ``ensure_ascii`` and ``sort_keys`` are honoured there, which is all
    the gateway asks for).

    Raises:
        NestedTooDeep: Nested deeper.
    """
    try:
        return json.dumps(value, **options)
    except RecursionError:
        return _dumps_without_recursion(value, **options)


_END = object()


def _dumps_without_recursion(
    value: Any, *, separators: tuple[str, str] = (", ", ": "), ensure_ascii: bool = True,
    sort_keys: bool = False, **_ignored: Any,
) -> str:
    item_separator, key_separator = separators
    string = encode_basestring_ascii if ensure_ascii else encode_basestring
    parts: list[str] = []
    # Each open container: its items still to write, whether it is an object, whether
    # its next item is its first.
    stack: list[tuple[Iterator[Any], bool, list[bool]]] = []

    def put(item: Any) -> None:
        if isinstance(item, dict):
            if len(stack) >= MAX_DEPTH:
                raise NestedTooDeep
            parts.append("{")
            items = sorted(item.items()) if sort_keys else item.items()
            stack.append((iter(items), True, [True]))
        elif isinstance(item, (list, tuple)):
            if len(stack) >= MAX_DEPTH:
                raise NestedTooDeep
            parts.append("[")
            stack.append((iter(item), False, [True]))
        else:
            parts.append(_scalar(item, string))

    put(value)
    while stack:
        items, is_object, first = stack[-1]
        item: Any = next(items, _END)
        if item is _END:
            parts.append("}" if is_object else "]")
            stack.pop()
            continue
        if not first[0]:
            parts.append(item_separator)
        first[0] = False
        if is_object:
            key: Any = item[0]
            item = item[1]
            parts.append(string(key if isinstance(key, str) else _scalar(key, str)))
            parts.append(key_separator)
        put(item)
    return "".join(parts)


def _scalar(item: Any, string: Callable[[str], str]) -> str:
    if isinstance(item, str):
        return string(item)
    if item is None:
        return "null"
    if item is True:
        return "true"
    if item is False:
        return "false"
    if isinstance(item, int):
        return int.__repr__(item)
    if isinstance(item, float):
        return json.dumps(item)
    raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")


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
