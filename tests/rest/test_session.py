"""Session routes and authentication: cookie, bearer token, Basic, anonymous, forgeries."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

from tests.conftest import CouchBackend, TestUser
from tests.rest.conftest import Reply, RunningGateway, StartGateway, basic

MakeUser = Callable[..., Awaitable[TestUser]]


async def test_login_sets_a_safe_cookie_and_returns_a_token(
    gateway: RunningGateway, make_user: MakeUser
) -> None:
    user = await make_user(["reader"])
    reply = await gateway.client.post(
        "/api/v1/session", json_body={"name": user.name, "password": user.password}
    )
    assert reply.status == 200
    assert reply.json["name"] == user.name and "reader" in reply.json["roles"]
    token = reply.json["token"]
    (cookie,) = reply.headers_all("Set-Cookie")
    assert cookie.startswith(f"wallaby_session={token};")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert user.password not in cookie

    by_cookie = await gateway.client.get(
        "/api/v1/session", headers={"Cookie": f"wallaby_session={token}"}
    )
    assert by_cookie.status == 200 and by_cookie.json["name"] == user.name
    by_bearer = await gateway.client.get(
        "/api/v1/session", headers={"Authorization": f"Bearer {token}"}
    )
    assert by_bearer.status == 200 and by_bearer.json["name"] == user.name
    by_basic = await gateway.client.get("/api/v1/session", headers=basic(user.name, user.password))
    assert by_basic.json == {"name": user.name, "roles": ["reader"]}

    out = await gateway.client.delete("/api/v1/session")
    assert out.status == 200
    assert "Max-Age=0" in out.headers_all("Set-Cookie")[0]


async def test_wrong_password_fails(gateway: RunningGateway, make_user: MakeUser) -> None:
    user = await make_user()
    reply = await gateway.client.post(
        "/api/v1/session", json_body={"name": user.name, "password": "wrong"}
    )
    assert reply.status == 401 and reply.json["error"] == "unauthorized"
    assert not reply.headers_all("Set-Cookie")
    basic_reply = await gateway.client.get("/api/v1/session", headers=basic(user.name, "wrong"))
    assert basic_reply.status == 401


async def test_forged_and_expired_tokens_are_rejected(
    gateway: RunningGateway, make_user: MakeUser
) -> None:
    user = await make_user()
    login = await gateway.client.post(
        "/api/v1/session", json_body={"name": user.name, "password": user.password}
    )
    token = login.json["token"]
    # Same user and timestamp, signature of another secret: CouchDB rejects the HMAC.
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    name, stamp, _mac = raw.split(b":", 2)
    forged = base64.urlsafe_b64encode(name + b":" + stamp + b":" + b"\x00" * 20).decode()
    # A token minted long ago (timestamp 1) is expired whatever its signature.
    expired = base64.urlsafe_b64encode(name + b":1:" + b"\x01" * 20).decode().rstrip("=")
    for bad in (forged.rstrip("="), expired, "not-a-token", "admin"):
        for headers in ({"Authorization": f"Bearer {bad}"}, {"Cookie": f"wallaby_session={bad}"}):
            reply = await gateway.client.get("/api/v1/session", headers=headers)
            assert reply.status == 401, (bad, headers, reply.body)
    malformed = await gateway.client.get(
        "/api/v1/session", headers={"Authorization": "Bearer a;b\x7f"}
    )
    assert malformed.status == 401
    other_scheme = await gateway.client.get(
        "/api/v1/session", headers={"Authorization": "Digest abc"}
    )
    assert other_scheme.status == 401


async def test_anonymous_requests_get_401(gateway: RunningGateway) -> None:
    for method, path in (("GET", "/api/v1/session"), ("GET", "/api/v1/db/somedb"),
                         ("GET", "/api/v1/db/somedb/docs/x"), ("POST", "/api/v1/db/somedb/find")):
        reply = await gateway.client.request(method, path, json_body={"selector": {}}
                                             if method == "POST" else None)
        assert reply.status == 401, (method, path)
        assert reply.json == {"error": "unauthorized", "reason": "authentication required",
                              "status": 401}


async def test_anonymous_allowed_when_configured(
    start_gateway: StartGateway, couch_backend: CouchBackend
) -> None:
    gateway = await start_gateway(allow_anonymous=True)
    reply = await gateway.client.get("/api/v1/session")
    assert reply.status == 200 and reply.json == {"name": None, "roles": []}


async def test_login_body_is_validated(gateway: RunningGateway) -> None:
    for body in ({}, {"name": "x"}, {"name": "x", "password": "y", "extra": 1},
                 {"name": 3, "password": "y"}):
        reply = await gateway.client.post("/api/v1/session", json_body=body)
        assert reply.status == 400, body
        assert reply.json["reason"].startswith("request body")
    not_json = await gateway.client.post(
        "/api/v1/session", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status == 400
    wrong_type = await gateway.client.post(
        "/api/v1/session", data=b"name=x", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status == 415
    # A form body is a body of the wrong type, not query parameters (Twisted merges a
    # form's fields into request.args).
    form = await gateway.client.post(
        "/api/v1/session", data=b"name=x&password=y",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (form.status, form.json["error"]) == (415, "bad_content_type"), form.json
    # Real query parameters are still judged, whatever the body.
    query = await gateway.client.post(
        "/api/v1/session?name=x", data=b"name=x&password=y",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert query.status == 400 and "unknown query parameter 'name'" in query.json["reason"]


async def test_the_basic_scheme_is_case_insensitive(
    gateway: RunningGateway, make_user: MakeUser
) -> None:
    """RFC 9110: schemes are case-insensitive; ``basic`` and ``BASIC`` work as ``Basic``."""
    user = await make_user()
    token = base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    for scheme in ("basic", "BASIC", "Basic"):
        reply = await gateway.client.get(
            "/api/v1/session", headers={"Authorization": f"{scheme} {token}"})
        assert reply.status == 200, (scheme, reply.body)
        assert reply.json["name"] == user.name


async def _login(gateway: RunningGateway, name: str, password: str) -> Reply:
    return await gateway.client.post("/api/v1/session",
                                     json_body={"name": name, "password": password})


async def test_password_guessing_is_stopped_per_account_and_client(
    start_gateway: StartGateway, make_user: MakeUser
) -> None:
    """After N failures an account's logins from that client are refused (429) without
    asking CouchDB, by POST /session and by Basic credentials alike; other accounts and
    the general rate limit are unaffected. Throwaway users: CouchDB 3.5 locks accounts."""
    gateway = await start_gateway(login_max_failures=3, login_lockout_seconds=60)
    victim, bystander = await make_user(), await make_user()
    for _ in range(3):
        assert (await _login(gateway, victim.name, "guess")).status == 401
    refused = await _login(gateway, victim.name, victim.password)
    assert refused.status == 429 and refused.json["error"] == "too_many_requests"
    assert 1 <= int(refused.header("Retry-After") or 0) <= 60
    by_basic = await gateway.client.get("/api/v1/session", headers=basic(victim.name, "x"))
    assert by_basic.status == 429  # the same account, the same client
    assert (await _login(gateway, bystander.name, bystander.password)).status == 200
    for _ in range(3):
        assert (await gateway.client.get(
            "/api/v1/db/x", headers=basic(bystander.name, "guess"))).status == 401
    assert (await gateway.client.get(
        "/api/v1/session", headers=basic(bystander.name, bystander.password))).status == 429


async def test_a_right_password_clears_the_failures(
    start_gateway: StartGateway, make_user: MakeUser
) -> None:
    gateway = await start_gateway(login_max_failures=2, login_lockout_seconds=60)
    user = await make_user()
    for _ in range(3):
        assert (await _login(gateway, user.name, "guess")).status == 401
        assert (await _login(gateway, user.name, user.password)).status == 200


def _cookie_attributes(cookie: str) -> tuple[str, dict[str, str]]:
    """A ``Set-Cookie`` value's ``name=value`` and its attributes (lower-case names)."""
    first, *rest = [part.strip() for part in cookie.split(";")]
    attrs: dict[str, str] = {}
    for part in rest:
        name, _, value = part.partition("=")
        attrs[name.lower()] = value
    return first, attrs


async def test_login_and_logout_cookies_are_scoped_to_the_whole_site(
    gateway: RunningGateway, make_user: MakeUser
) -> None:
    """The cookie is sent to /, /static/, the WebSocket and the API alike: Path=/ exactly
    (a narrower path would leave the demo page's WebSocket unauthenticated, and a logout
    with another path would not clear the login's cookie)."""
    user = await make_user()
    login = await gateway.client.post(
        "/api/v1/session", json_body={"name": user.name, "password": user.password})
    (cookie,) = login.headers_all("Set-Cookie")
    _first, attrs = _cookie_attributes(cookie)
    assert attrs.get("path") == "/", cookie
    assert "secure" not in attrs, cookie  # plain-HTTP default: a Secure cookie would be lost
    out = await gateway.client.delete("/api/v1/session")
    (cleared,) = out.headers_all("Set-Cookie")
    first, attrs = _cookie_attributes(cleared)
    assert first == f"{gateway.settings.cookie_name}=", cleared
    assert attrs.get("path") == "/" and attrs.get("max-age") == "0", cleared


async def test_samesite_none_cookie_is_always_secure(
    start_gateway: StartGateway, make_user: MakeUser
) -> None:
    """RFC 6265bis 5.6.7 / browsers: a ``SameSite=None`` cookie without ``Secure`` is
    rejected, so the browser could never log in. The gateway adds ``Secure`` itself
    (gateway/http/session.py) whatever WALLABY_COOKIE_SECURE says, and whatever case the
    operator wrote the setting in."""
    user = await make_user()
    for spelled in ("None", "none"):
        gateway = await start_gateway(cookie_samesite=spelled, cookie_secure=False)
        login = await gateway.client.post(
            "/api/v1/session", json_body={"name": user.name, "password": user.password})
        assert login.status == 200
        (cookie,) = login.headers_all("Set-Cookie")
        _first, attrs = _cookie_attributes(cookie)
        assert attrs.get("samesite") == "None", cookie
        assert "secure" in attrs, cookie
        out = await gateway.client.delete("/api/v1/session")
        (cleared,) = out.headers_all("Set-Cookie")
        assert "secure" in _cookie_attributes(cleared)[1], cleared  # else the browser ignores it


async def test_samesite_strict_is_what_the_cookie_says(
    start_gateway: StartGateway, make_user: MakeUser
) -> None:
    user = await make_user()
    gateway = await start_gateway(cookie_samesite="strict")
    login = await gateway.client.post(
        "/api/v1/session", json_body={"name": user.name, "password": user.password})
    (cookie,) = login.headers_all("Set-Cookie")
    assert _cookie_attributes(cookie)[1].get("samesite") == "Strict", cookie
