"""HTTP/1.1 conformance of the gateway as an origin server (RFC 9110 and 9112).

Raw sockets against a real listening gateway (in this process, so every blocking socket
call runs in a thread) in front of the session's real CouchDB-compatible server. Each
test names the rule it checks; each failed on the build before session 21's fixes.
"""

from __future__ import annotations

import base64
import json
import socket
from typing import Any
from urllib.parse import quote

from twisted.internet.threads import deferToThread

from tests.rest.conftest import RunningGateway, Scenario, basic


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes; return everything received until the peer closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.settimeout(timeout)
        received = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if _complete(received):
                    break
        except (TimeoutError, OSError):
            pass
        return received


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    return await deferToThread(_exchange, port, data, timeout)


def status_of(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0  # closed without any answer


def headers_of(answer: bytes) -> dict[bytes, list[bytes]]:
    head = answer.partition(b"\r\n\r\n")[0]
    found: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return found


def port_of(gateway: RunningGateway) -> int:
    return int(gateway.service.port)


def auth_line(scenario: Scenario) -> bytes:
    return b"Authorization: " + basic(scenario.member.name, scenario.member.password)[
        "Authorization"].encode() + b"\r\n"


# -- request-target and header lengths -------------------------------------------------

async def test_overlong_request_target_is_answered_414(
    gateway: RunningGateway, scenario: Scenario
) -> None:
    """RFC 9112 section 3: a request-target longer than the server will parse MUST get 414.

    The browser client's own ``allDocs(db, {keys: [...]})`` puts ``keys`` in the query
    string: about 420 keys of 32 characters make a request line over Twisted's 16 KiB
    line limit, and the gateway closes the connection without a word (the page sees
    ``network_error``, HAProxy a 502 "empty response" that it retries on another
    replica).
    """
    keys = json.dumps([f"{n:032x}" for n in range(420)])
    target = f"/api/v1/db/{scenario.db.name}/all_docs?keys={quote(keys)}".encode()
    assert len(target) > 16384
    answer = await exchange(port_of(gateway), b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            + auth_line(scenario) + b"\r\n")
    assert status_of(answer) == 414, f"expected 414 URI Too Long, got {answer[:200]!r}"
    envelope = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert envelope["status"] == 414


async def test_overlong_header_line_is_answered_with_a_4xx(gateway: RunningGateway) -> None:
    """RFC 9110 section 5.4: a header field larger than the server will process MUST get
    an appropriate 4xx (431, RFC 6585). A 17 KiB ``Cookie`` (a browser with many cookies
    on the site) is met with a closed connection and no answer at all.
    """
    answer = await exchange(port_of(gateway), b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Cookie: a=" + b"x" * 17000 + b"\r\n\r\n")
    assert 400 <= status_of(answer) < 500, f"expected a 4xx (431), got {answer[:200]!r}"


# -- request-target forms and Host ---------------------------------------------------

async def test_absolute_form_request_target_is_accepted(gateway: RunningGateway) -> None:
    """RFC 9112 section 3.2.2: "A server MUST accept the absolute-form in requests"."""
    port = port_of(gateway)
    answer = await exchange(port, b"GET http://127.0.0.1:%d/health HTTP/1.1\r\n"
                            b"Host: 127.0.0.1:%d\r\n\r\n" % (port, port))
    assert status_of(answer) == 200, answer[:300]
    # ... whose authority replaces Host (so two Host fields do not matter then), and one
    # with userinfo is refused (RFC 9110 4.2.4).
    answer = await exchange(port, b"GET HTTP://127.0.0.1:%d?x=1 HTTP/1.1\r\n"
                            b"Host: a\r\nHost: b\r\n\r\n" % port)
    assert status_of(answer) == 200 and b"<!doctype html>" in answer, answer[:300]  # "/?x=1"
    answer = await exchange(port, b"GET http://u:p@127.0.0.1:%d/health HTTP/1.1\r\n"
                            b"Host: 127.0.0.1\r\n\r\n" % port)
    assert status_of(answer) == 400, answer[:300]


def test_origin_form_of_absolute_targets() -> None:
    from gateway.http.request_target import origin_form

    assert origin_form(b"http://h:1/a/b?c=d") == (b"/a/b?c=d", b"h:1")
    assert origin_form(b"HTTPS://h") == (b"/", b"h")
    assert origin_form(b"http://h?q") == (b"/?q", b"h")
    assert origin_form(b"http://[::1]:8/x") == (b"/x", b"[::1]:8")
    for refused in (b"/a", b"http://", b"http:///a", b"http://u@h/a", b"ftp://h/a",
                    b"http://h/a#frag", b"*"):
        assert origin_form(refused) is None, refused


async def test_http11_request_without_host_is_refused(gateway: RunningGateway) -> None:
    """RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request lacking Host."""
    answer = await exchange(port_of(gateway), b"GET /health HTTP/1.1\r\n\r\n")
    assert status_of(answer) == 400, answer[:300]


async def test_request_with_two_host_headers_is_refused(gateway: RunningGateway) -> None:
    """RFC 9112 section 3.2: ... and to any request with more than one Host field line."""
    answer = await exchange(port_of(gateway),
                            b"GET /health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
    assert status_of(answer) == 400, answer[:300]


async def test_request_with_two_authorization_headers_is_refused(
    gateway: RunningGateway, scenario: Scenario
) -> None:
    """RFC 9110 sections 11.6.2 and 5.3: ``Authorization`` is a singleton field.

    With two, a proxy in front that reads the last one and the gateway that read the
    first disagree about who is calling (valid then bogus Basic credentials were served
    as the user, bogus then valid refused 401). Refused as two ``Host`` are, with the
    same 400 envelope, whichever comes first.
    """
    port = port_of(gateway)
    bogus = b"Authorization: Basic " + base64.b64encode(b"nobody:wrong") + b"\r\n"
    head = b"GET /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    one = await exchange(port, head + auth_line(scenario) + b"\r\n")
    assert status_of(one) == 200, one[:300]
    two_hosts = await exchange(port, b"GET /api/v1/session HTTP/1.1\r\nHost: a\r\n"
                               b"Host: b\r\n" + auth_line(scenario) + b"\r\n")
    for lines in (auth_line(scenario) + bogus, bogus + auth_line(scenario),
                  auth_line(scenario) + auth_line(scenario)):
        answer = await exchange(port, head + lines + b"\r\n")
        assert status_of(answer) == 400, answer[:300]
        envelope = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert envelope["error"] == json.loads(two_hosts.partition(b"\r\n\r\n")[2])["error"]
        assert "Authorization" in envelope["reason"], envelope
        assert scenario.member.name.encode() not in answer, answer[:300]
    # Cookie is left alone: HTTP/2 front ends may split it into several field lines.
    cookies = await exchange(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Cookie: a=1\r\nCookie: b=2\r\n\r\n")
    assert status_of(cookies) == 200, cookies[:300]


# -- methods ---------------------------------------------------------------------------

async def test_lower_case_method_is_not_the_standard_method(scenario: Scenario,
                                                            gateway: RunningGateway) -> None:
    """RFC 9110 section 9.1: the method token is case-sensitive.

    ``delete`` is not ``DELETE``: an intermediary filtering methods (``METH_*`` ACLs,
    a WAF) lets it through as an unknown method, and the gateway then deletes the
    document. It should be refused (501, or 405 with ``Allow``) and do nothing.
    """
    saved = await scenario.member_client.put(f"/api/v1/db/{scenario.db.name}/docs/lc",
                                             json_body={"n": 1})
    assert saved.status == 201
    rev = saved.json["rev"]
    answer = await exchange(port_of(gateway),
                            f"delete /api/v1/db/{scenario.db.name}/docs/lc?rev={rev} HTTP/1.1\r\n"
                            f"Host: 127.0.0.1\r\n".encode() + auth_line(scenario) + b"\r\n")
    still = await scenario.member_client.get(f"/api/v1/db/{scenario.db.name}/docs/lc")
    assert still.status == 200, "a lower-case 'delete' deleted the document"
    assert status_of(answer) in (405, 501), answer[:300]


async def test_405_on_the_root_carries_allow(gateway: RunningGateway) -> None:
    """RFC 9110 section 15.5.6: a 405 MUST carry ``Allow`` (docs/rest-api.md: "any
    method it does not take answers 405 with Allow"). ``POST /`` has none."""
    answer = await exchange(port_of(gateway), b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Length: 0\r\n\r\n")
    assert status_of(answer) == 405, answer[:300]
    allow = headers_of(answer).get(b"allow")
    assert allow, f"405 without Allow: {answer[:400]!r}"
    assert b"GET" in allow[0]


# -- framing ---------------------------------------------------------------------------

async def test_cors_preflight_204_has_no_content_length(start_gateway: Any) -> None:
    """RFC 9110 section 8.6: a server MUST NOT send Content-Length in a 204 response."""
    gateway = await start_gateway(cors_origins=("https://app.example",))
    answer = await exchange(port_of(gateway),
                            b"OPTIONS /api/v1/db/somedb/docs/a HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Origin: https://app.example\r\n"
                            b"Access-Control-Request-Method: PUT\r\n\r\n", timeout=2.0)
    assert status_of(answer) == 204, answer[:300]
    assert b"content-length" not in headers_of(answer), answer[:600]


# -- every error is the JSON envelope, every response has an X-Request-Id ------------

async def test_malformed_request_gets_the_error_envelope(gateway: RunningGateway) -> None:
    """docs/rest-api.md "Errors": every error is the JSON envelope, and every response
    carries an ``X-Request-Id``. A header with whitespace before its colon (RFC 9112 5.1:
    400) gets Twisted's bare ``HTTP/1.1 400 Bad Request`` instead: no body, no
    ``X-Request-Id``, no ``Date`` (RFC 9110 6.6.1 MUST for a 4xx)."""
    answer = await exchange(port_of(gateway), b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"X-Request-Id : abc\r\n\r\n", timeout=2.0)
    assert status_of(answer) == 400, answer[:300]
    headers = headers_of(answer)
    assert b"x-request-id" in headers and b"date" in headers, answer[:300]
    envelope = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert envelope["status"] == 400


async def test_heads_too_large_get_431(gateway: RunningGateway) -> None:
    """More than 500 header fields, or a head over 16 KiB in all: 431 with the envelope."""
    many = b"".join(b"X-F%d: 1\r\n" % n for n in range(501))
    big = b"".join(b"X-G%d: %s\r\n" % (n, b"y" * 900) for n in range(20))
    for extra in (many, big):
        answer = await exchange(port_of(gateway), b"GET /health HTTP/1.1\r\nHost: x\r\n"
                                + extra + b"\r\n", timeout=2.0)
        assert status_of(answer) == 431, answer[:300]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] \
            == "header_fields_too_large"
        assert b"close" in headers_of(answer)[b"connection"][0].lower()


async def test_options_asterisk_names_the_methods(gateway: RunningGateway) -> None:
    """RFC 9110 9.3.7: ``OPTIONS *`` asks about the server as a whole."""
    answer = await exchange(port_of(gateway), b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
                            timeout=2.0)
    assert status_of(answer) == 200, answer[:300]
    headers = headers_of(answer)
    assert headers[b"allow"] == [b"DELETE, GET, HEAD, OPTIONS, POST, PUT"]
    assert b"x-request-id" in headers and headers[b"content-length"] == [b"0"]


async def test_asterisk_form_passes_the_front_door(gateway: RunningGateway) -> None:
    """``OPTIONS *`` is answered by Twisted's own fast path, around the front door: no
    ``X-Request-Id`` (promised on every response), no access-log line, no rate limit;
    ``GET *`` likewise gets Twisted's bare 405."""
    answer = await exchange(port_of(gateway), b"GET * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                            timeout=2.0)
    assert status_of(answer) in (400, 405), answer[:300]
    assert b"x-request-id" in headers_of(answer), answer[:300]
    assert answer.partition(b"\r\n\r\n")[2].startswith(b"{"), answer[:300]


async def test_426_names_upgrade_in_connection(gateway: RunningGateway, reactor: Any) -> None:
    """RFC 9110 section 7.8: "A sender of Upgrade MUST also send an "upgrade" connection
    option in the Connection header field", so intermediaries do not forward it. The
    426 of a plain GET of ``/api/v1/changes`` carries ``Upgrade: websocket`` alone."""
    from gateway.ws.mount import install_changes

    install_changes(gateway.app, gateway.app.couch, gateway.settings, reactor)
    answer = await exchange(port_of(gateway), b"GET /api/v1/changes HTTP/1.1\r\n"
                            b"Host: 127.0.0.1\r\n\r\n", timeout=2.0)
    assert status_of(answer) == 426, answer[:300]
    headers = headers_of(answer)
    assert headers.get(b"upgrade") == [b"websocket"], answer[:400]
    connection = b",".join(headers.get(b"connection", [])).lower()
    assert b"upgrade" in connection, answer[:400]


async def test_a_lower_case_method_meets_the_checks_before_its_own(
    gateway: RunningGateway, reactor: Any,
) -> None:
    """A refused path is refused as with its upper-case method (not 405 advertising GET);
    the WebSocket endpoint, a route of its own, is 405 with ``Allow: GET``, not 404."""
    from gateway.ws.mount import install_changes

    install_changes(gateway.app, gateway.app.couch, gateway.settings, reactor)
    port = port_of(gateway)
    for target in (b"/static/%2e%2e/x", b"//"):
        answer = await exchange(port, b"get " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == 400, (target, answer[:300])
    answer = await exchange(port, b"get /api/v1/changes HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 405, answer[:300]
    assert headers_of(answer)[b"allow"] == [b"GET"]
