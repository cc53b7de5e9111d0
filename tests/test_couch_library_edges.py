"""The CouchDB client library at its edges: revisions sent, query values encoded, cookie
ages, credentials' encoding, what may be replayed, idle connections, error mapping.

Each test runs against the real pouchdb-server the suite starts (fixtures in conftest).
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from gateway.couch import Conflict, Database, Unauthorized
from gateway.couch.urls import attachment_path, doc_path, path_bytes
from tests.test_couch_documents import expired_session, member_session


async def test_delete_sends_the_rev_so_a_stale_rev_is_a_conflict(db: Database) -> None:
    """Guards against DELETE without ``?rev=``: pouchdb-server deletes the current revision
    when no rev is given, so only a stale rev shows whether the rev was sent."""
    doc: dict[str, Any] = {"_id": "stale-delete"}
    await db.save(doc)
    stale = dict(doc)
    doc["v"] = 2
    await db.save(doc)  # now at 2-…
    with pytest.raises(Conflict) as conflict:
        await db.delete(stale)
    assert conflict.value.status == 409
    assert (await db.get("stale-delete"))["v"] == 2  # still there


@pytest.mark.parametrize("key", ["a+b", "a&b=c", "x=1", "p%2Bq"])
async def test_query_values_with_reserved_characters_reach_couchdb_intact(
    db: Database, key: str
) -> None:
    """Guards against ``+``, ``&``, ``=`` left unencoded in a query value: ``+`` would be
    read as a space, ``&``/``=`` would split the parameter."""
    await db.save({"_id": key})
    await db.save({"_id": "a b"})
    rows = await db.all_docs(key=key)
    assert [r["id"] for r in rows] == [key]


async def test_open_attachment_of_an_older_revision_reads_that_revision(db: Database) -> None:
    """Guards against ``open_attachment`` dropping the document's ``?rev=``."""
    import treq

    doc: dict[str, Any] = {"_id": "att-revs"}
    await db.save(doc)
    await db.put_attachment(doc, "a.txt", b"first", content_type="text/plain")
    old = dict(doc)
    await db.put_attachment(doc, "a.txt", b"second", content_type="text/plain")
    response = await db.open_attachment(old, "a.txt")
    assert await treq.content(response) == b"first"
    response = await db.open_attachment(doc, "a.txt")
    assert await treq.content(response) == b"second"


async def test_an_explicit_limit_wins_over_the_original_count_alias(db: Database) -> None:
    """Guards against ``count`` overriding ``limit``."""
    await db.bulk_save([{"_id": f"c{i}"} for i in range(6)])
    assert len(await db.all_docs(count=2, limit=5)) == 5


async def test_a_session_renewed_for_age_is_not_renewed_on_every_request(
    couch_backend: Any, admin: Any, make_user: Any, reactor: Any
) -> None:
    """Guards against a fresh cookie's issue time not recorded: after one login for age,
    the next requests must reuse that cookie, not log in each time."""
    from twisted.internet.task import Clock

    from gateway.couch.auth import SessionAuth

    user = await make_user()
    clock = Clock()
    clock.advance(1000)  # a clock not at 0, as a real one never is
    logins: list[str] = []

    async def login(name: str, password: str) -> str:
        logins.append(name)
        return await admin.transport.login(name, password)

    auth = SessionAuth(user.name, user.password, login, clock=clock, max_age=60)
    as_user = admin.as_identity(auth)
    assert (await as_user.session())["userCtx"]["name"] == user.name
    assert len(logins) == 1
    clock.advance(61)  # the cookie is now too old: one fresh login
    assert (await as_user.session())["userCtx"]["name"] == user.name
    assert len(logins) == 2
    clock.advance(10)
    for _ in range(3):
        assert (await as_user.session())["userCtx"]["name"] == user.name
    assert len(logins) == 2


async def test_basic_auth_sends_a_non_ascii_password_as_utf8(
    couch_backend: Any, admin: Any, reactor: Any, pool: Any
) -> None:
    """Guards against Basic credentials encoded as Latin-1: CouchDB reads them as UTF-8."""
    import contextlib
    import uuid

    name = f"user-{uuid.uuid4().hex[:12]}"
    password = "pässwörd-" + uuid.uuid4().hex[:8]  # Latin-1 encodable, differs from UTF-8
    await admin.create_user(name, password, [])
    try:
        database = Database("_users", username=name, password=password, url=couch_backend.url,
                            reactor=reactor, pool=pool)
        session = await admin.as_identity(database.transport.auth).session()
        assert session["userCtx"]["name"] == name
    finally:
        with contextlib.suppress(Exception):
            await admin.delete_user(name)


def test_a_view_queried_by_post_is_a_read() -> None:
    """Guards against looking at the last path segment only: ``POST …/_view/v`` with ``keys``
    is a query, so a lost answer to it is not reported as a write that may have applied."""
    from gateway.couch.transport import writes

    assert writes("POST", ["db", "_design", "d", "_view", "v"]) is False
    assert writes("POST", ["db", "_design", "d", "_view", "_bulk_docs"]) is False
    assert writes("POST", ["db", "_bulk_docs"]) is True


async def test_a_streamed_upload_is_not_replayed_after_a_401(
    admin: Any, make_user: Any, db: Database
) -> None:
    """Guards against a body producer counted as replayable: the file was consumed by the
    first attempt, so a replay would send an empty body under the first one's length.
    The 401 must come back as ``Unauthorized`` (and the session renew on the next call)."""
    user, auth, as_user = await member_session(admin, make_user, db)
    await db.save({"_id": "d"})
    doc = await as_user.get("d")
    auth._cookie = expired_session(user.name)
    with pytest.raises(Unauthorized):
        await as_user.put_attachment(doc, "f.bin", io.BytesIO(b"x" * 100_000))


async def test_a_streamed_request_body_is_not_replayed_by_open_stream_after_a_401(
    admin: Any, make_user: Any, db: Database
) -> None:
    """Guards against ``open_stream`` retrying a request whose body was a producer."""
    from twisted.web.client import FileBodyProducer

    user, auth, as_user = await member_session(admin, make_user, db)
    doc: dict[str, Any] = {"_id": "d"}
    await db.save(doc)
    await as_user.get("d")  # logged in
    auth._cookie = expired_session(user.name)
    body = FileBodyProducer(io.BytesIO(b"y" * 100_000))
    with pytest.raises(Unauthorized):
        await as_user.transport.open_stream(
            "PUT", [db.name, "d", "g.bin"], params={"rev": doc["_rev"]}, body=body,
            headers={"Content-Type": "application/octet-stream"},
        )


async def test_default_pool_drops_an_idle_connection_before_node_closes_it(
    couch_backend: Any, reactor: Any
) -> None:
    """Guards against idle timeout at or above Node's 5 s keep-alive timeout: 4.5 s after a
    request its connection must already be gone from the default pool."""
    from twisted.internet.task import deferLater

    from gateway.couch import CouchServer
    from gateway.couch.pool import connection_pool

    pool = connection_pool(reactor)
    try:
        server = CouchServer(couch_backend.url, reactor=reactor, pool=pool)
        await server.info()
        assert sum(len(c) for c in pool._connections.values()) == 1
        await deferLater(reactor, 4.5, lambda: None)
        assert sum(len(c) for c in pool._connections.values()) == 0
    finally:
        await pool.closeCachedConnections()


async def test_a_write_to_a_refused_port_is_certainly_not_applied(reactor: Any, pool: Any) -> None:
    """Guards against a refused connection treated as a write that may have applied: the
    write never left, so it stays a 503 with ``Retry-After``, not a 502 "answer lost"."""
    from gateway.couch import CouchUnreachable
    from gateway.embedded import free_port
    from gateway.errors import AnswerLost

    database = Database("x", url=f"http://127.0.0.1:{free_port()}", reactor=reactor, pool=pool)
    with pytest.raises(CouchUnreachable) as unreachable:
        await database.save({"_id": "never-sent"})
    assert not isinstance(unreachable.value, AnswerLost)
    assert unreachable.value.status == 503 and unreachable.value.retry_after is not None



async def test_a_redirect_whose_body_is_not_json_is_an_upstream_error(reactor: Any) -> None:
    """Guards against a 3xx with a non-JSON body turned into an error *dict* returned as
    data: nothing follows redirects, so the caller must get an error, not a fake body.
    pouchdb-server sends no such answer: a one-line server on loopback does (as a proxy
    in front of CouchDB redirecting to a login page would)."""
    from twisted.internet.protocol import Factory, Protocol

    from gateway.couch import CouchServer
    from gateway.couch.pool import connection_pool
    from gateway.errors import UpstreamServerError

    class Redirects(Protocol):
        def dataReceived(self, data: bytes) -> None:
            body = b"<html>Moved</html>"
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 302 Found\r\nLocation: /login\r\n"
                                 b"Content-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))

    port = reactor.listenTCP(0, Factory.forProtocol(Redirects), interface="127.0.0.1")
    pool = connection_pool(reactor)
    try:
        server = CouchServer(f"http://127.0.0.1:{port.getHost().port}", reactor=reactor,
                             pool=pool)
        with pytest.raises(UpstreamServerError) as bad:
            await server.database("db").get("doc")
        assert bad.value.error == "bad_response"
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()


async def test_a_forwarded_session_sends_the_refreshed_cookie_it_adopted(
    admin: Any, make_user: Any, db: Database
) -> None:
    """Guards against ``ForwardedAuth.observe`` updating ``session`` but not the header it
    sends: after adopting a refreshed cookie the next request must carry it."""
    from gateway.couch.auth import ForwardedAuth

    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []},
                           "admins": {"names": [], "roles": []}})
    await db.save({"_id": "mine"})
    fresh = await admin.login(user.name, user.password)
    auth = ForwardedAuth({"Cookie": f"AuthSession={expired_session(user.name)}"})
    auth.observe([f"AuthSession={fresh}; Version=1; Path=/; HttpOnly"])
    assert auth.session == fresh
    as_user = admin.as_identity(auth).database(db.name)
    assert (await as_user.get("mine"))["_id"] == "mine"


async def test_open_stream_raises_for_a_400(db: Database) -> None:
    """Guards against ``open_stream`` raising only above 400: a body that is not JSON is a
    400 ``bad_request``, raised as such rather than handed back as a response."""
    from gateway.couch import BadRequest
    from gateway.couch.transport import BytesBody

    with pytest.raises(BadRequest) as bad:
        await db.transport.open_stream(
            "PUT", [db.name, "d400"], body=BytesBody(b"{not json"),
            headers={"Content-Type": "application/json"},
        )
    assert bad.value.status == 400


async def test_a_401_to_a_streamed_upload_still_renews_the_session(
    admin: Any, make_user: Any, db: Database
) -> None:
    """A streamed upload (a file object) cannot be sent again after a 401, but the 401
    still drops the refused cookie: the uploads after it log in afresh, instead of each
    failing with 401 until the cookie ages out (up to 540 s)."""
    user, auth, as_user = await member_session(admin, make_user, db)
    await db.save({"_id": "d"})
    doc = await as_user.get("d")
    auth._cookie = expired_session(user.name)  # e.g. CouchDB restarted with a new secret
    with pytest.raises(Unauthorized):
        await as_user.put_attachment(doc, "one.bin", io.BytesIO(b"1" * 10_000))
    results = []
    for n in range(3):
        try:
            await as_user.put_attachment(doc, f"f{n}.bin", io.BytesIO(b"2" * 10_000))
            results.append("ok")
        except Unauthorized as exc:
            results.append(f"{exc.status}")
    assert results == ["ok", "ok", "ok"]


@pytest.mark.parametrize("doc_id", ["", ".", "..", "_design/..", "_local/."])
async def test_ids_a_url_cannot_name_are_refused_before_anything_is_sent(
    db: Database, doc_id: str,
) -> None:
    """An empty id would name the database itself, and ``.`` or ``..`` segments are
    removed by URL normalisation on the way (RFC 3986, 6.2.2.3): ``DELETE
    /db/_design/..`` could reach CouchDB as ``DELETE /db``."""
    with pytest.raises(ValueError, match="cannot be named in a URL"):
        doc_path("db", doc_id)
    with pytest.raises(ValueError, match="cannot be named in a URL"):
        await db.get(doc_id)
    with pytest.raises(ValueError, match=r"cannot be named in a URL|has no '_id'"):
        await db.delete({"_id": doc_id, "_rev": "1-x"})
    assert (await db.info())["doc_count"] == 0


@pytest.mark.parametrize("name", ["../../_users", "a//b", "./x", "x/", "."])
async def test_attachment_names_a_url_cannot_name_are_refused(db: Database, name: str) -> None:
    doc: dict[str, Any] = {"_id": "holder"}
    await db.save(doc)
    with pytest.raises(ValueError, match="cannot be named in a URL"):
        attachment_path("db", "doc", name)
    with pytest.raises(ValueError, match="cannot be named in a URL"):
        await db.put_attachment(doc, name, b"data", "text/plain")
    assert "_attachments" not in await db.get("holder")


def test_ids_and_names_with_dots_inside_segments_still_work() -> None:
    assert path_bytes(doc_path("db", "...")) == b"/db/..."
    assert path_bytes(doc_path("db", "_design/a.b")) == b"/db/_design/a.b"
    assert path_bytes(attachment_path("db", "d", "dir/.hidden/x..y")) == (
        b"/db/d/dir/.hidden/x..y")
