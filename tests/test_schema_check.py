"""The compiled schema checks agree with ``jsonschema`` (Draft 2020-12) on the contract.

``gateway.http.schema_check`` replaces ``jsonschema`` on the request path: a value the
compiled check accepts is never shown to ``jsonschema``. So the two must agree on every
schema of the contract, which hypothesis checks here with values built to sit on the
schemas' edges (their property names, enum values, lengths around every bound, numbers
around every bound, NaN and infinities, booleans where numbers are expected).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.errors import InvalidRequest
from gateway.http.contract import Contract, load_contract
from gateway.http.schema_check import compile_schema

CONTRACT = load_contract()
BASE = "urn:test"
REGISTRY: Registry[Any] = Registry().with_resource(
    BASE, Resource.from_contents(CONTRACT.document, default_specification=DRAFT202012)
)


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _schemas() -> list[dict[str, Any]]:
    """Every schema the contract validates with: parameters, bodies, responses, components."""
    found: dict[str, dict[str, Any]] = {}
    for op in CONTRACT.operations.values():
        candidates = [p.get("schema", {}) for p in op.parameters.values()]
        if op.body_schema is not None:
            candidates.append(op.body_schema)
        for answer in op.responses.values():
            for media in CONTRACT._deref(answer).get("content", {}).values():
                candidates.append(media.get("schema", {}))
        for schema in candidates:
            found[json.dumps(schema, sort_keys=True)] = schema
    for schema in CONTRACT.document.get("components", {}).get("schemas", {}).values():
        found[json.dumps(schema, sort_keys=True)] = schema
    return list(found.values())


SCHEMAS = _schemas()


def _nodes(schema: Any, seen: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """The schema's nodes, following its ``$ref`` s."""
    seen = set() if seen is None else seen
    for node in _walk(schema):
        yield node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/") and ref not in seen:
            seen.add(ref)
            yield from _nodes(CONTRACT._resolve(ref), seen)


def _jsonschema(schema: Any) -> Draft202012Validator:
    text = json.dumps(schema).replace('"$ref": "#', f'"$ref": "{BASE}#')
    return Draft202012Validator(json.loads(text), registry=REGISTRY)


def values_for(schema: Any) -> st.SearchStrategy[Any]:
    """JSON values on the edges of ``schema``: its names, words, lengths and bounds."""
    nodes = list(_nodes(schema))
    names = sorted({n for node in nodes for n in (node.get("properties") or {})})
    words = sorted({w for node in nodes for w in [*node.get("enum", []), node.get("const")]
                    if isinstance(w, str)})
    lengths = sorted({node[k] + d for node in nodes for k in ("minLength", "maxLength")
                      if isinstance(node.get(k), int) for d in (-1, 0, 1) if node[k] + d >= 0})
    bounds = sorted({node[k] + d for node in nodes for k in ("minimum", "maximum")
                     if isinstance(node.get(k), (int, float)) for d in (-1, -0.5, 0, 0.5, 1)})
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(-3, 3), st.integers(),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(bounds or [0]),
        st.sampled_from([1.0, -0.0, 2.5, math.inf, -math.inf, math.nan]),
        st.sampled_from(words or [""]), st.text(max_size=8),
        st.sampled_from(lengths or [0]).map(lambda n: "x" * n),
        st.sampled_from(lengths or [0]).map(lambda n: "é" * n),
    )
    edges = st.sampled_from([*bounds, *words, *("x" * n for n in lengths), None, True, 1.0])
    keys = st.sampled_from(names) | st.text(max_size=4) if names else st.text(max_size=4)
    nested = st.recursive(
        leaves | edges,
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(keys, children, max_size=len(names) + 2),
        max_leaves=12,
    )
    return edges | nested | _near(schema, edges | leaves, set())


def _near(schema: Any, edge: st.SearchStrategy[Any], seen: set[str]) -> st.SearchStrategy[Any]:
    """Values valid for ``schema`` except where ``edge`` values were drawn instead."""
    if not isinstance(schema, dict):
        return edge
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            return edge
        return _near(CONTRACT._resolve(ref), edge, seen | {ref})
    if "enum" in schema or "const" in schema:
        return st.sampled_from([*schema.get("enum", []), schema.get("const")]) | edge
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        needed = set(schema.get("required") or [])
        return st.fixed_dictionaries(
            {n: _near(props.get(n, {}), edge, seen) for n in needed},
            optional={n: _near(sub, edge, seen) for n, sub in props.items() if n not in needed},
        ) | edge
    if kind == "array":
        return st.lists(_near(schema.get("items", {}), edge, seen), max_size=3) | edge
    if kind == "string":
        low = schema.get("minLength", 0)
        return st.text(min_size=low, max_size=max(low, min(schema.get("maxLength", 20), 20))) | edge
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum")) | edge
    return edge


def test_the_request_path_schemas_are_compiled() -> None:
    """Documents, path and query parameters all get a compiled check (or the speed-up is lost)."""
    ops = CONTRACT.operations
    hot = [ops["putDocument"].body_schema, ops["createDocument"].body_schema,
           *(p.get("schema", {}) for op in ("getDocument", "putDocument", "queryView")
             for p in ops[op].parameters.values())]
    assert hot
    for schema in hot:
        assert compile_schema(schema, CONTRACT._resolve) is not None, schema


def test_every_contract_schema_compiles() -> None:
    compiled = [s for s in SCHEMAS if compile_schema(s, CONTRACT._resolve) is not None]
    assert len(compiled) == len(SCHEMAS)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s, sort_keys=True)[:60])
def test_compiled_checks_agree_with_jsonschema(schema: Any) -> None:
    check = compile_schema(schema, CONTRACT._resolve)
    assert check is not None
    validator = _jsonschema(schema)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(values_for(schema))
    def agree(value: Any) -> None:
        assert check(value) == validator.is_valid(value), value

    agree()


@pytest.mark.parametrize(("schema", "value", "valid"), [
    ({"type": "integer"}, 1.0, True),
    ({"type": "integer"}, True, False),
    ({"type": "number"}, False, False),
    ({"type": "number", "minimum": 0}, math.nan, True),  # as jsonschema: NaN < 0 is false
    ({"type": "number", "exclusiveMaximum": 3}, 3, False),
    ({"minLength": 2}, 5, True),  # length bounds apply to strings only
    ({"type": "string", "maxLength": 1}, "é", True),  # code points, not bytes
    ({"type": "string", "pattern": "^a"}, "ab", True),
    ({"type": "string", "pattern": "^a"}, "ba", False),
    ({"enum": ["a", "b"]}, "a", True),
    ({"enum": ["1"]}, 1, False),
    ({"const": "x"}, "y", False),
    ({"const": True}, 1, False),
    ({"const": True}, True, True),
    ({"enum": [None, "a"]}, 0, False),
    ({"type": "array", "items": {"type": "string"}, "minItems": 1}, [], False),
    ({"type": "array", "items": False}, [], True),
    ({"type": "object", "required": ["a"]}, {}, False),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
     {"a": "x", "b": 1}, False),
    ({"type": ["string", "null"]}, None, True),
    ({"description": "annotations only", "x-json": True}, {"any": "thing"}, True),
])
def test_keywords(schema: dict[str, Any], value: Any, valid: bool) -> None:
    check = compile_schema(schema, CONTRACT._resolve)
    assert check is not None
    assert check(value) is valid
    assert _jsonschema(schema).is_valid(value) is valid


@pytest.mark.parametrize("schema", [
    {"anyOf": [{"type": "string"}]},
    {"type": "string", "multipleOf": 2},
    {"enum": [1, "a"]},  # JSON equality of numbers stays with jsonschema
    {"$ref": "http://elsewhere.example/schema"},
    {"type": "decimal"},
])
def test_what_is_not_compiled_stays_with_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_schema(schema, CONTRACT._resolve) is None


def test_recursive_references_compile() -> None:
    tree = {"type": "object", "properties": {"children": {
        "type": "array", "items": {"$ref": "#/defs/tree"}}}}
    document = {"defs": {"tree": tree}}
    check = compile_schema({"$ref": "#/defs/tree"}, lambda ref: document["defs"]["tree"])
    assert check is not None
    assert check({"children": [{"children": []}, {}]})
    assert not check({"children": [{"children": 3}]})


def test_contract_still_names_the_problem() -> None:
    """The compiled check refuses; jsonschema's message reaches the client."""
    contract = Contract(CONTRACT.document)
    schema = {"type": "object", "properties": {"_id": {"type": "string"}}}
    with pytest.raises(InvalidRequest, match=r"request body\._id: 5 is not of type 'string'"):
        contract.validate(schema, {"_id": 5}, "request body")
    contract.validate(schema, {"_id": "ok"}, "request body")
