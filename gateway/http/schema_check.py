"""Fast yes/no checks compiled from the contract's JSON schemas.

``jsonschema`` walks validator objects on every call (``evolve``, ``iter_errors``, a
generator per keyword): for a small document body that was a tenth of the gateway's CPU
per ``PUT`` (BENCHMARKS.md). The contract's schemas use a handful of keywords, so each
schema is compiled once, here, into nested closures that answer one question: does
this value conform? ``jsonschema`` still explains *why* a value does not, on that rare
path only (:meth:`gateway.http.contract.Contract.validate`).

Each keyword mirrors ``jsonschema``'s Draft 2020-12 implementation, down to its
comparisons (``not value < minimum`` accepts NaN as ``jsonschema`` does), and a schema
using any assertion this module does not implement is not compiled at all
(:func:`compile_schema` returns ``None``) and stays with ``jsonschema``. Equivalence is
property-tested over every schema of the contract (``tests/test_schema_check.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Check", "compile_schema"]

#: ``value -> conforms?``
Check = Callable[[Any], bool]
#: Resolves a ``$ref`` of the document (``#/components/...``) to its schema.
Resolver = Callable[[str], Any]

#: Draft 2020-12 keywords that assert or apply and are *not* compiled here: a schema
#: using one is left to ``jsonschema``. Keywords in neither list are annotations (or
#: unknown), which ``jsonschema`` ignores too.
_NOT_COMPILED = frozenset({
    "prefixItems", "contains", "patternProperties", "dependentSchemas", "propertyNames",
    "if", "then", "else", "allOf", "anyOf", "oneOf", "not", "unevaluatedItems",
    "unevaluatedProperties", "multipleOf", "uniqueItems", "maxContains", "minContains",
    "maxProperties", "minProperties", "dependentRequired", "$dynamicRef", "$recursiveRef",
    "$id", "$anchor", "$dynamicAnchor", "dependencies",
})


class _NotCompiled(Exception):
    """The schema needs ``jsonschema``."""


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": _is_integer,
    "number": _is_number,
}


def compile_schema(schema: Any, resolve: Resolver) -> Check | None:
    """Compile a schema into a check, or ``None`` when ``jsonschema`` must judge it.

    Args:
        schema: A JSON schema (a mapping or a boolean).
        resolve: Resolves the document's ``$ref`` s.

    Returns:
        A function telling whether a value conforms, or ``None``.
    """
    try:
        return _Compiler(resolve).compile(schema)
    except _NotCompiled:
        return None


class _Compiler:
    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self._refs: dict[str, Check] = {}

    def compile(self, schema: Any) -> Check:
        if schema is True:
            return lambda _: True
        if schema is False:
            return lambda _: False
        if not isinstance(schema, Mapping) or _NOT_COMPILED.intersection(schema):
            raise _NotCompiled
        checks = [check for check in (
            self._type(schema), self._values(schema), self._string(schema),
            self._numbers(schema), self._object(schema), self._array(schema),
            self._ref(schema),
        ) if check is not None]
        if not checks:
            return lambda _: True
        if len(checks) == 1:
            return checks[0]
        return lambda value: all(check(value) for check in checks)

    def _ref(self, schema: Mapping[str, Any]) -> Check | None:
        ref = schema.get("$ref")
        if ref is None:
            return None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise _NotCompiled
        known = self._refs.get(ref)
        if known is None:
            # A recursive schema meets its own $ref while compiling: point at a cell
            # filled in once the target is compiled.
            cell: list[Check] = []
            self._refs[ref] = lambda value: cell[0](value)
            cell.append(self.compile(self._resolve(ref)))
            known = self._refs[ref] = cell[0]
        return known

    @staticmethod
    def _type(schema: Mapping[str, Any]) -> Check | None:
        kind = schema.get("type")
        if kind is None:
            return None
        names = [kind] if isinstance(kind, str) else list(kind)
        if not names or any(name not in _TYPES for name in names):
            raise _NotCompiled
        tests = [_TYPES[name] for name in names]
        if len(tests) == 1:
            return tests[0]
        return lambda value: any(test(value) for test in tests)

    @staticmethod
    def _values(schema: Mapping[str, Any]) -> Check | None:
        """``enum`` and ``const`` of strings, booleans and null.

        For these, jsonschema's JSON equality is ``==`` between strings and identity
        otherwise (``True`` is not ``1``); other constants stay with jsonschema.
        """
        options: list[Any] | None = None
        if "enum" in schema:
            options = _scalars(schema["enum"])
        if "const" in schema:
            const = _scalars([schema["const"]])
            options = const if options is None else [o for o in options if o in const]
        if options is None:
            return None
        words = {o for o in options if isinstance(o, str)}
        singletons = [o for o in options if not isinstance(o, str)]

        def check(value: Any) -> bool:
            if isinstance(value, str):
                return value in words
            return any(value is o for o in singletons)

        return check

    @staticmethod
    def _string(schema: Mapping[str, Any]) -> Check | None:
        low, high = schema.get("minLength"), schema.get("maxLength")
        pattern = schema.get("pattern")
        if low is None and high is None and pattern is None:
            return None
        search = re.compile(pattern).search if pattern is not None else None

        def check(value: Any) -> bool:
            if not isinstance(value, str):
                return True
            return _sized(len(value), low, high) and (search is None or search(value) is not None)

        return check

    @staticmethod
    def _numbers(schema: Mapping[str, Any]) -> Check | None:
        bounds = [(name, schema[name]) for name in
                  ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if name in schema]
        if not bounds:
            return None
        if not all(_is_number(bound) for _, bound in bounds):
            raise _NotCompiled
        low, high = schema.get("minimum"), schema.get("maximum")
        low_x, high_x = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")

        def check(value: Any) -> bool:
            if not _is_number(value):
                return True
            # jsonschema's own failing comparisons (so NaN passes, as there).
            return not (
                (low is not None and value < low)
                or (high is not None and value > high)
                or (low_x is not None and value <= low_x)
                or (high_x is not None and value >= high_x)
            )

        return check

    def _object(self, schema: Mapping[str, Any]) -> Check | None:
        required = schema.get("required")
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if required is None and properties is None and additional is None:
            return None
        needed = list(_strings(required or []))
        known = {name: self.compile(sub) for name, sub in (properties or {}).items()}
        extra = self.compile(additional) if additional is not None else None

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            for name in needed:
                if name not in value:
                    return False
            for name, item in value.items():
                test = known.get(name)
                if test is not None:
                    if not test(item):
                        return False
                elif extra is not None and not extra(item):
                    return False
            return True

        return check

    def _array(self, schema: Mapping[str, Any]) -> Check | None:
        items = schema.get("items")
        low, high = schema.get("minItems"), schema.get("maxItems")
        if items is None and low is None and high is None:
            return None
        each = self.compile(items) if items is not None else None

        def check(value: Any) -> bool:
            if not isinstance(value, list):
                return True
            return _sized(len(value), low, high) and (each is None or all(map(each, value)))

        return check


def _sized(size: int, low: int | None, high: int | None) -> bool:
    """``minLength``/``maxLength`` and ``minItems``/``maxItems``: within the bounds given."""
    return (low is None or size >= low) and (high is None or size <= high)


def _scalars(values: Any) -> list[Any]:
    if not isinstance(values, list) or not all(
        isinstance(v, str) or v is None or isinstance(v, bool) for v in values
    ):
        raise _NotCompiled
    return values


def _strings(values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _NotCompiled
    return values
