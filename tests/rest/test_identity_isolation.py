"""gateway/identity.py end to end: users never taken for one another, roles never taken
for server admin, Basic credentials sent upstream in canonical form (real gateway, real
pouchdb-server, real sockets). Each test fails with a one-line change to identity.py
that passed the rest of the suite (session 22's mutation testing)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web import server
from twisted.web.resource import Resource

from gateway.couch import CouchServer
from tests.conftest import TestUser, unique_name
from tests.rest.conftest import RunningGateway, basic

MakeUser = Callable[..., Awaitable[TestUser]]


async def test_two_users_with_session_cookies_are_never_taken_for_one_another(
    gateway: RunningGateway, make_user: MakeUser, admin: CouchServer,
) -> None:
    """identity.py ``_cache_key``: the verified identity is cached per credential. Two
    users who authenticate with the session cookie (no Authorization header), one right
    after the other, must each be themselves -- and act upstream with their own session."""
    ann, bob = await make_user(), await make_user()
    tokens = {}
    for user in (ann, bob):
        login = await gateway.client.post(
            "/api/v1/session", json_body={"name": user.name, "password": user.password})
        assert login.status == 200, login.body
        tokens[user.name] = login.json["token"]
    private = admin.database(unique_name("annonly"))
    await private.create()
    try:
        await private.set_security({"admins": {"names": [], "roles": []},
                                    "members": {"names": [ann.name], "roles": []}})
        for user in (ann, bob, ann, bob):
            cookie = {"Cookie": f"wallaby_session={tokens[user.name]}"}
            who = await gateway.client.get("/api/v1/session", headers=cookie)
            assert who.status == 200 and who.json["name"] == user.name, (user.name, who.json)
        bob_cookie = {"Cookie": f"wallaby_session={tokens[bob.name]}"}
        await gateway.client.get(f"/api/v1/db/{private.name}",
                                 headers={"Cookie": f"wallaby_session={tokens[ann.name]}"})
        as_bob = await gateway.client.get(f"/api/v1/db/{private.name}", headers=bob_cookie)
        assert as_bob.status in (401, 403), (as_bob.status, as_bob.body)  # not ann's access
    finally:
        await private.destroy()


async def test_a_user_with_roles_is_still_not_a_server_admin(
    gateway: RunningGateway, make_user: MakeUser, admin: CouchServer,
) -> None:
    """identity.py ``Identity.is_admin``: only CouchDB's ``_admin`` role makes a server
    admin; a user with ordinary roles may not create or delete databases."""
    user = await make_user(["editor", "admin"])
    client = gateway.client.with_headers(basic(user.name, user.password))
    who = await client.get("/api/v1/session")
    assert who.status == 200 and set(who.json["roles"]) >= {"editor", "admin"}
    fresh = unique_name("rolesdb")
    created = await client.put(f"/api/v1/db/{fresh}")
    assert created.status == 403, created.body
    assert not await admin.database(fresh).exists()


class _RecordingCouch(Resource):
    """A loopback stand-in CouchDB that records the Authorization headers it is sent."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.session_status = 200

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        authorization = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if request.path == b"/_session":
            self.seen.append(authorization)
            if self.session_status != 200:
                request.setResponseCode(self.session_status)
                return b'{"error":"forbidden","reason":"Account is temporarily locked."}'
            return json.dumps({"ok": True, "userCtx": {"name": "ann", "roles": []}}).encode()
        return b'{"couchdb":"Welcome","version":"3.5.0"}'


async def test_basic_credentials_reach_couchdb_in_canonical_form_through_the_guard(
    start_gateway: Any, reactor: Any,
) -> None:
    """identity.py ``identify``: Basic credentials go through the failed-login guard and
    CouchDB is sent the canonical encoding of the name the guard counted ("never the
    client's own spelling"), so the guard and CouchDB cannot disagree on the account."""
    fake = _RecordingCouch()
    listening = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
    try:
        gateway = await start_gateway(
            couchdb_url=f"http://127.0.0.1:{listening.getHost().port}")
        for spelling in ("basic YW5uOnNlY3JldDE", "BASIC   YW5uOnNlY3JldDE="):
            reply = await gateway.client.get("/api/v1/session",
                                             headers={"Authorization": spelling})
            assert reply.status == 200 and reply.json["name"] == "ann", reply.body
        assert fake.seen and set(fake.seen) == {"Basic YW5uOnNlY3JldDE="}, fake.seen
    finally:
        await listening.stopListening()


async def test_a_session_check_couchdb_forbids_is_answered_401_invalid_credentials(
    start_gateway: Any, reactor: Any,
) -> None:
    """identity.py ``_verify``: a 400 or 403 from ``GET /_session`` means the credentials
    do not authenticate (CouchDB 3.5 refuses a locked-out account so): the caller gets
    401 and the failed-login guard counts it, not a relayed 403."""
    fake = _RecordingCouch()
    fake.session_status = 403
    listening = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
    try:
        gateway = await start_gateway(
            couchdb_url=f"http://127.0.0.1:{listening.getHost().port}")
        reply = await gateway.client.get(
            "/api/v1/session", headers={"Authorization": "Basic YW5uOnNlY3JldDE="})
        assert reply.status == 401 and reply.json["error"] == "unauthorized", reply.body
    finally:
        await listening.stopListening()
