"""The API contract: ``api_schema/openapi.yaml`` loaded, and requests checked against it.

OpenAPI 3.1 schema objects are JSON Schema 2020-12, so ``jsonschema`` validates them
directly; ``$ref`` s into the document resolve through a ``referencing`` registry.
Query parameters arrive as text and are coerced by their schema's type first
(``integer``, ``number``, ``boolean``); parameters described by ``content:
application/json`` (OpenAPI's way of saying a value is serialised JSON: view keys) are
decoded before validation against that content's schema. Unknown query parameters are
refused, so a typo is a precise 400 rather than a silently ignored option.

The same object also checks responses (used by the test-suite's client).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway import deep_json
from gateway.couch.urls import JSON_NULL
from gateway.errors import InvalidRequest
from gateway.http.schema_check import Check, compile_schema
from gateway.schemas import api_schema_dir

__all__ = ["SPEC_PATH", "Contract", "Operation", "as_served", "load_contract"]

SPEC_PATH = api_schema_dir() / "openapi.yaml"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_BASE_URI = "urn:wallaby:openapi"


@dataclass
class Operation:
    """One operation of the contract.

    Attributes:
        operation_id: Its ``operationId``.
        method: Upper-case HTTP method.
        path: The path template, e.g. ``/api/v1/db/{db}``.
        parameters: ``(location, name) -> parameter object`` (path-level ones included).
        body_schema: The JSON schema of an ``application/json`` body, if any.
        body_required: Whether a body is required.
        responses: The ``responses`` object.
    """

    operation_id: str
    method: str
    path: str
    parameters: dict[tuple[str, str], dict[str, Any]]
    body_schema: dict[str, Any] | None
    body_required: bool
    responses: dict[str, Any]
    pattern: re.Pattern[str] = field(repr=False, default=re.compile(""))
    required_query: bool = False

    def __post_init__(self) -> None:
        self.required_query = any(
            location == "query" and param.get("required")
            for (location, _), param in self.parameters.items()
        )


def _json_content(param: dict[str, Any]) -> dict[str, Any]:
    """A parameter with ``content: application/json`` as one with ``x-json`` and a schema.

    The document itself is left as it is (it is served at ``/openapi.json``).
    """
    media = param.get("content", {}).get("application/json")
    if media is None:
        return param
    return {**param, "x-json": True, "schema": media.get("schema", {})}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large for a double")
    return value


def strict_json(text: str | bytes) -> Any:
    """Parse JSON as RFC 8259 defines it.

    Python's extensions ``NaN``, ``Infinity`` and ``-Infinity`` are refused: CouchDB
    refuses them, and they could not be sent on as JSON. So is a number too large for a
    double (``1e999``), which Python reads as infinity and would send on as ``Infinity``.

    Raises:
        ValueError: Not JSON.
        NestedTooDeep: Nested deeper than :data:`gateway.deep_json.MAX_DEPTH` levels.
    """
    return deep_json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def _coerce(name: str, raw: str, param: Mapping[str, Any]) -> Any:
    schema = param.get("schema", {})
    if param.get("x-json"):
        try:
            return strict_json(raw)
        except (ValueError, RecursionError):
            raise InvalidRequest(f"query parameter '{name}' must be JSON") from None
    kind = schema.get("type")
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            raise InvalidRequest(f"query parameter '{name}' must be an integer") from None
    if kind == "number":
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise InvalidRequest(f"query parameter '{name}' must be a number")
        return number
    if kind == "boolean":
        if raw in ("true", "false"):
            return raw == "true"
        raise InvalidRequest(f"query parameter '{name}' must be 'true' or 'false'")
    return raw


def _describe(error: ValidationError, where: str) -> str:
    location = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.path)
    return f"{where}{location}: {error.message}"


class Contract:
    """The OpenAPI document and validators for its operations.

    Args:
        document: The parsed OpenAPI document.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_BASE_URI, resource)
        # Checks by schema object: the document's schemas live as long as the contract.
        self._by_schema: dict[int, tuple[Mapping[str, Any], Check]] = {}
        self.operations: dict[str, Operation] = {}
        for path, item in document["paths"].items():
            shared = [_json_content(self._deref(p)) for p in item.get("parameters", [])]
            for method in _METHODS:
                op = item.get(method)
                if op is None:
                    continue
                params = {(p["in"], p["name"]): p for p in shared}
                for p in op.get("parameters", []):
                    p = _json_content(self._deref(p))
                    params[(p["in"], p["name"])] = p
                body = op.get("requestBody", {})
                json_body = body.get("content", {}).get("application/json")
                pattern = re.compile(
                    "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"
                )
                self.operations[op["operationId"]] = Operation(
                    op["operationId"], method.upper(), path, params,
                    json_body.get("schema") if json_body else None,
                    bool(body.get("required")), op.get("responses", {}), pattern,
                )

    def _deref(self, obj: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in obj:
            obj = self._resolve(obj["$ref"])
        return obj

    @cache  # noqa: B019 - one contract per process; validators are costly to build
    def _validator(self, schema_json: str) -> Draft202012Validator:
        schema = json.loads(schema_json)
        return Draft202012Validator(schema, registry=self._registry)

    def validate(self, schema: Mapping[str, Any], value: Any, where: str) -> None:
        """Validate ``value`` against a schema of the document.

        A schema is compiled once (:mod:`gateway.http.schema_check`); ``jsonschema``
        judges what the compiled check refuses (and names the problem), and schemas the
        check cannot express.

        Raises:
            InvalidRequest: It does not conform; the message names the first problem.
        """
        known = self._by_schema.get(id(schema))
        if known is not None and known[0] is schema:
            check = known[1]
        else:
            check = compile_schema(schema, self._resolve) or self._jsonschema(schema).is_valid
            self._by_schema[id(schema)] = (schema, check)  # keeps ``schema`` alive
        if check(value):  # the common case; errors are sorted only on failure
            return
        validator = self._jsonschema(schema)
        error = next(iter(sorted(validator.iter_errors(value), key=lambda e: e.path)), None)
        if error is not None:
            raise InvalidRequest(_describe(error, where))

    def _jsonschema(self, schema: Mapping[str, Any]) -> Draft202012Validator:
        rewritten = json.dumps(schema, sort_keys=True).replace(
            '"$ref": "#', f'"$ref": "{_BASE_URI}#'
        )
        return self._validator(rewritten)

    def _resolve(self, ref: str) -> Any:
        """The schema a ``#/...`` reference of the document points at."""
        node: Any = self.document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def check_query(self, operation_id: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
        """Validate and coerce the query parameters of a request.

        Args:
            operation_id: The operation.
            query: Decoded query parameters (name -> values).

        Returns:
            The parameters with typed values.

        Raises:
            InvalidRequest: An unknown, repeated or ill-typed parameter.
        """
        op = self.operations[operation_id]
        result: dict[str, Any] = {}
        if not query and not op.required_query:
            return result  # nothing to coerce, validate or miss
        for name, values in query.items():
            param = op.parameters.get(("query", name))
            if param is None:
                raise InvalidRequest(f"unknown query parameter '{name}' for {op.operation_id}")
            if len(values) != 1:
                raise InvalidRequest(f"query parameter '{name}' given more than once")
            words = param.get("x-json-words", ())
            if values[0] in words:
                result[name] = values[0]  # a plain word CouchDB also takes (open_revs=all)
                continue
            value = _coerce(name, values[0], param)
            if isinstance(value, str) and value in words:
                result[name] = value  # the same word as JSON text ("all")
                continue
            self.validate(param.get("schema", {}), value, f"query parameter '{name}'")
            # ``key=null`` asks for the null key: None would drop the parameter upstream.
            result[name] = JSON_NULL if value is None and param.get("x-json") else value
        for (location, name), param in op.parameters.items():
            if location == "query" and param.get("required") and name not in result:
                raise InvalidRequest(f"query parameter '{name}' is required")
        return result

    def check_path(self, operation_id: str, values: Mapping[str, str]) -> None:
        """Validate decoded path parameters.

        Raises:
            InvalidRequest: A value violates its schema.
        """
        op = self.operations[operation_id]
        for name, value in values.items():
            param = op.parameters.get(("path", name))
            if param is not None:
                self.validate(param.get("schema", {}), value, f"path parameter '{name}'")

    def check_body(self, operation_id: str, body: Any) -> None:
        """Validate a decoded JSON request body.

        Raises:
            InvalidRequest: The body violates the operation's schema.
        """
        schema = self.operations[operation_id].body_schema
        if schema is not None:
            self.validate(schema, body, "request body")

    # -- responses (used by tests) ---------------------------------------------

    def match(self, method: str, path: str) -> Operation | None:
        """The operation serving a request path (percent-encoded), if any."""
        method = "GET" if method.upper() == "HEAD" else method.upper()
        for op in self.operations.values():
            if op.method == method and op.pattern.match(path):
                return op
        return None

    def check_response(
        self, operation: Operation, status: int, content_type: str | None, body: bytes
    ) -> None:
        """Check that a response is one the contract declares.

        Raises:
            AssertionError: Undeclared status, or a JSON body that violates its schema.
        """
        declared = operation.responses.get(str(status)) or operation.responses.get("default")
        assert declared is not None, f"{operation.operation_id}: status {status} not declared"
        declared = self._deref(declared)
        content = declared.get("content")
        if not content or not body:
            return
        media = (content_type or "").split(";")[0].strip()
        if "application/json" in content and media == "application/json":
            try:
                self.validate(content["application/json"].get("schema", {}), deep_json.loads(body),
                              f"{operation.operation_id} {status} body")
            except InvalidRequest as exc:
                raise AssertionError(exc.reason) from None
        elif "*/*" not in content:
            assert media in content, (
                f"{operation.operation_id} {status}: content type {media!r} not declared"
            )


def load_contract(path: Path | None = None) -> Contract:
    """Load the contract from ``api_schema/openapi.yaml`` (or ``path``)."""
    with (path or SPEC_PATH).open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return Contract(document)


def as_served(document: Mapping[str, Any], cookie_name: str) -> dict[str, Any]:
    """The contract as this gateway serves it: its session cookie under its own name.

    Args:
        document: The contract's document.
        cookie_name: The gateway's session cookie name (``Settings.cookie_name``).

    Returns:
        A copy of ``document``.
    """
    served: dict[str, Any] = json.loads(json.dumps(document))
    schemes = served.get("components", {}).get("securitySchemes", {})
    if "cookieAuth" in schemes:
        schemes["cookieAuth"]["name"] = cookie_name
    return served
