"""What a request carries, read for the routes: its query, its client and its JSON body."""

from __future__ import annotations

from typing import Any

from twisted.web.http import parse_qs

from gateway.deep_json import NestedTooDeep
from gateway.errors import InvalidRequest, NotJsonBody, PayloadTooLarge
from gateway.http.contract import Contract, strict_json

__all__ = ["client_host", "client_key", "decode_query", "json_body", "raw_header"]


def client_host(request: Any) -> str:
    """The client's address as the front door determined it (``unknown`` if none).

    Args:
        request: The client's request.

    Returns:
        The address, as text.
    """
    return str(getattr(request, "client_host", None) or "unknown")


def raw_header(request: Any, name: bytes) -> bytes | None:
    """A request header's last value as the client sent it, to relay upstream unchanged.

    As text (``getHeader``) a byte 0x80-0xFF would be re-encoded as UTF-8 on the way,
    and CouchDB would store or compare other bytes than the client's.

    Args:
        request: The client's request.
        name: The header's name, lower-case.
    """
    values: list[bytes] | None = request.requestHeaders.getRawHeaders(name)
    return values[-1] if values else None


def client_key(request: Any) -> str:
    """What the limits count the client as (``ClientAddress.key``; ``unknown`` if none).

    Args:
        request: The client's request.

    Returns:
        The key, as text (an IPv6 client's prefix, e.g. ``2001:db8:1:2::/64``).
    """
    return str(getattr(request, "client_key", None) or "unknown")


def decode_query(request: Any) -> dict[str, list[str]]:
    """The query string's parameters, decoded.

    Args:
        request: The client's request.

    Returns:
        Each parameter's values, in order.

    Raises:
        InvalidRequest: The query string is not valid UTF-8.
    """
    # The query string only: Twisted's ``request.args`` also holds the fields of a
    # form-encoded body, which would be judged as query parameters (and the body,
    # refused by its media type, would never be).
    _, _, query = bytes(request.uri).partition(b"?")
    args: dict[bytes, list[bytes]] = parse_qs(query, 1)  # type: ignore[no-untyped-call]
    try:
        return {k.decode("utf-8"): [v.decode("utf-8") for v in vs] for k, vs in args.items()}
    except UnicodeDecodeError:
        raise InvalidRequest("the query string is not valid UTF-8") from None


def json_body(request: Any, operation: str, contract: Contract, max_bytes: int) -> Any:
    """The request's JSON body, checked against the operation's schema.

    Args:
        request: The client's request.
        operation: The contract's ``operationId``.
        contract: The API contract.
        max_bytes: The largest body taken.

    Returns:
        The decoded body.

    Raises:
        PayloadTooLarge: The body is over ``max_bytes``.
        NotJsonBody: The body is not ``application/json``.
        InvalidRequest: The body is not valid JSON, or not what the operation takes.
    """
    content: Any = request.content
    content.seek(0, 2)
    size = content.tell()
    if size > max_bytes:
        raise PayloadTooLarge(f"JSON bodies are limited to {max_bytes} bytes")
    media = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise NotJsonBody("the request body must be application/json")
    content.seek(0)
    try:
        body = strict_json(content.read())
    except NestedTooDeep as exc:
        raise InvalidRequest(f"the request body is {exc}") from None
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    contract.check_body(operation, body)
    return body
