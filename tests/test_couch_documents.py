"""gateway.couch against the real server: databases, documents, bulk, errors, auth."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater

from gateway.couch import (
    BasicAuth,
    Conflict,
    CouchError,
    CouchServer,
    CouchUnreachable,
    Database,
    NoAuth,
    NotFound,
    PreconditionFailed,
    Unauthorized,
)
from gateway.couch.auth import SessionAuth
from gateway.embedded import free_port
from tests.conftest import CouchBackend, unique_name
from tests.support.couchconfig import config_value


async def test_original_readme_scenarios_with_inline_callbacks(
    couch_backend: CouchBackend, reactor: Any, pool: Any
) -> None:
    """The original Wallaby README, written with ``yield`` as its users did."""
    name = unique_name()

    @defer.inlineCallbacks
    def run() -> Any:
        newdb = Database(name, username=couch_backend.admin_username,
                         password=couch_backend.admin_password, url=couch_backend.url,
                         reactor=reactor, pool=pool)
        res = yield newdb.create()
        assert res == {"ok": True}
        info = yield newdb.info()
        assert info["db_name"] == name
        doc = {"_id": "newdocid"}
        res = yield newdb.save(doc)
        assert "error" not in res and doc["_rev"] == res["rev"]
        doc = yield newdb.get("newdocid")
        doc["test"] = "Hello World"
        res = yield newdb.save(doc)
        assert doc["_rev"].startswith("2-")
        assert (yield newdb.get("newdocid"))["test"] == "Hello World"
        res = yield newdb.delete(doc)
        assert res["ok"] is True
        res = yield newdb.destroy()
        assert res == {"ok": True}
        return True

    assert (yield_result := await run()) is True, yield_result


async def test_info_create_destroy_and_exists(admin: CouchServer) -> None:
    database = admin.database(unique_name())
    assert await database.exists() is False
    with pytest.raises(NotFound) as missing:
        await database.info()
    assert missing.value.status == 404 and missing.value.error == "not_found"
    await database.create()
    assert await database.exists() is True
    with pytest.raises(PreconditionFailed) as exists:
        await database.create()
    assert exists.value.status == 412
    await database.destroy()
    assert await database.exists() is False


async def test_save_posts_without_id_and_puts_with_id(db: Database) -> None:
    doc: dict[str, Any] = {"kind": "server-id"}
    result = await db.save(doc)
    assert result["ok"] is True
    assert doc["_id"] == result["id"] and doc["_rev"] == result["rev"]
    stored = await db.get(doc["_id"])
    assert stored["kind"] == "server-id"

    named: dict[str, Any] = {"_id": "client-id", "n": 1}
    await db.save(named)
    assert (await db.get("client-id"))["n"] == 1


async def test_stale_rev_conflicts_with_409(db: Database) -> None:
    doc: dict[str, Any] = {"_id": "c"}
    await db.save(doc)
    stale = dict(doc)
    doc["v"] = 2
    await db.save(doc)
    stale["v"] = 3
    with pytest.raises(Conflict) as conflict:
        await db.save(stale)
    assert conflict.value.status == 409
    assert conflict.value.error == "conflict"
    assert isinstance(conflict.value, CouchError)


async def test_get_with_revision_parameters(db: Database) -> None:
    doc: dict[str, Any] = {"_id": "r", "v": 1}
    await db.save(doc)
    first = doc["_rev"]
    doc["v"] = 2
    await db.save(doc)
    old = await db.get("r", rev=first)
    assert old["v"] == 1
    with_revs = await db.get("r", revs=True, revs_info=True, conflicts=True)
    assert with_revs["_revisions"]["start"] == 2
    assert next(info["rev"] for info in with_revs["_revs_info"]) == doc["_rev"]


async def test_delete_then_get_is_not_found(db: Database) -> None:
    doc: dict[str, Any] = {"_id": "gone"}
    await db.save(doc)
    await db.delete(doc)
    with pytest.raises(NotFound):
        await db.get("gone")
    with pytest.raises(ValueError, match="_rev"):
        await db.delete({"_id": "no-rev"})


@pytest.mark.parametrize(
    "doc_id",
    [
        "with/slash",
        "plus+sign",
        "question?mark",
        "hash#tag",
        "per%cent",
        "with space",
        "ünïcödé-ß-日本",
        "_design/ddoc-x",
        "_local/checkpoint",
        "a/../../_users",
    ],
)
async def test_special_ids_round_trip(db: Database, doc_id: str) -> None:
    doc: dict[str, Any] = {"_id": doc_id, "payload": doc_id}
    await db.save(doc)
    stored = await db.get(doc_id)
    assert stored["_id"] == doc_id and stored["payload"] == doc_id
    doc["payload"] = "updated"
    await db.save(doc)
    assert (await db.get(doc_id))["payload"] == "updated"
    await db.delete(doc)
    with pytest.raises(NotFound):
        await db.get(doc_id)


async def test_bulk_save_updates_revs_and_reports_per_doc_errors(db: Database) -> None:
    docs: list[dict[str, Any]] = [{"_id": f"b{i}", "i": i} for i in range(5)] + [{"i": 99}]
    results = await db.bulk_save(docs)
    assert len(results) == 6
    assert all(d["_rev"].startswith("1-") for d in docs)
    assert docs[5]["_id"] == results[5]["id"]
    stale = [{"_id": "b0", "i": 0, "_rev": "1-00000000000000000000000000000000"}]
    failed = await db.bulk_save(stale)
    assert failed[0]["error"] == "conflict"
    assert stale[0]["_rev"] == "1-00000000000000000000000000000000"
    fetched = await db.bulk_get(["b1", {"id": "b2", "rev": docs[2]["_rev"]}])
    ids = [r["id"] for r in fetched["results"]]
    assert ids == ["b1", "b2"]
    assert fetched["results"][1]["docs"][0]["ok"]["i"] == 2


async def test_unreachable_server_raises_distinct_error(reactor: Any, pool: Any) -> None:
    port = free_port()
    database = Database("x", url=f"http://127.0.0.1:{port}", reactor=reactor, pool=pool)
    with pytest.raises(CouchUnreachable) as unreachable:
        await database.info()
    assert unreachable.value.status == 503
    assert isinstance(unreachable.value, CouchError)


async def test_wrong_password_is_401_and_never_echoed(
    couch_backend: CouchBackend, admin: CouchServer, make_user: Any, reactor: Any, pool: Any
) -> None:
    user = await make_user()
    secret = "definitely-not-" + user.password
    database = Database("_users", username=user.name, password=secret, url=couch_backend.url,
                        reactor=reactor, pool=pool)
    with pytest.raises(Unauthorized) as denied:
        await database.info()
    assert denied.value.status == 401
    assert secret not in str(denied.value) and secret not in repr(denied.value)
    assert secret not in repr(database.transport)
    with pytest.raises(Unauthorized):
        await admin.login(user.name, secret)


async def test_session_auth_logs_in_and_renews(
    couch_backend: CouchBackend, admin: CouchServer, make_user: Any, db: Database
) -> None:
    user, auth, as_user = await member_session(admin, make_user, db)
    doc: dict[str, Any] = {"_id": "mine"}
    await as_user.save(doc)
    who = await admin.as_identity(auth).session()
    assert who["userCtx"]["name"] == user.name
    # A session CouchDB no longer accepts is replaced by a fresh login, transparently.
    expired = expired_session(user.name)
    auth._cookie = expired
    assert (await as_user.get("mine"))["_id"] == "mine"
    assert auth._cookie != expired


async def test_requests_meeting_an_expired_session_at_once_all_renew_it(
    admin: CouchServer, make_user: Any, db: Database
) -> None:
    """Each gets its 401 and retries; the later ones must not fail for want of a cookie."""
    user, auth, as_user = await member_session(admin, make_user, db)
    await db.save({"_id": "mine"})
    assert (await as_user.get("mine"))["_id"] == "mine"  # logged in
    auth._cookie = expired_session(user.name)  # CouchDB serves it as anonymous: 401
    results = await DeferredList([as_user.get("mine") for _ in range(4)], consumeErrors=True)
    assert [repr(r.value) for ok, r in results if not ok] == []
    assert [r["_id"] for _, r in results] == ["mine"] * 4


def expired_session(name: str) -> str:
    """A well-formed ``AuthSession`` value issued long ago (timestamp 1).

    CouchDB answers 400 to a malformed cookie but ignores an expired one: the request
    runs as anonymous, and a members-only database answers 401.
    """
    raw = f"{name}:1:".encode() + b"\x01" * 32
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def member_session(
    admin: CouchServer, make_user: Any, db: Database,
) -> tuple[Any, SessionAuth, Database]:
    """A new user made the only member of ``db``, its session auth (not logged in yet)
    and ``db`` as that user."""
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []},
                           "admins": {"names": [], "roles": []}})
    auth = admin.session_auth(user.name, user.password)
    return user, auth, admin.as_identity(auth).database(db.name)


async def test_idle_session_logs_in_again_before_couchdb_forgets_it(
    couch_backend: CouchBackend, admin: CouchServer, make_user: Any, reactor: Any
) -> None:
    """An expired cookie is served as anonymous, not refused: it must not be used."""
    user = await make_user()
    async with config_value(admin, couch_backend.is_pouchdb, "chttpd_auth", "timeout", "3"):
        auth = admin.session_auth(user.name, user.password, max_age=2)
        as_user = admin.as_identity(auth)
        assert (await as_user.session())["userCtx"]["name"] == user.name
        first = auth._cookie
        await deferLater(reactor, 4.5, lambda: None)
        assert (await as_user.session())["userCtx"]["name"] == user.name
        assert auth._cookie != first


async def test_security_members_only(
    couch_backend: CouchBackend, admin: CouchServer, make_user: Any, db: Database
) -> None:
    member, outsider = await make_user(), await make_user()
    await db.set_security({"members": {"names": [member.name], "roles": []},
                           "admins": {"names": [], "roles": []}})
    await db.save({"_id": "secret", "v": 1})
    as_member = admin.as_identity(BasicAuth(member.name, member.password)).database(db.name)
    as_outsider = admin.as_identity(BasicAuth(outsider.name, outsider.password)).database(db.name)
    anonymous = admin.as_identity(NoAuth()).database(db.name)
    assert (await as_member.get("secret"))["v"] == 1
    with pytest.raises(CouchError) as forbidden:
        await as_outsider.get("secret")
    # CouchDB 3 answers an authenticated non-member with 403; pouchdb-server says 401.
    assert forbidden.value.status == (401 if couch_backend.is_pouchdb else 403)
    with pytest.raises(CouchError) as anon:
        await anonymous.get("secret")
    assert anon.value.status in (401, 403)
    # A non-admin member may not write a design document.
    with pytest.raises(CouchError) as design:
        await as_member.save({"_id": "_design/evil", "views": {}})
    assert design.value.status in (401, 403)


async def test_request_timeout_raises_couch_timeout(reactor: Any, pool: Any) -> None:
    """A server that accepts but never answers ends in CouchTimeout, not a hang."""
    from twisted.internet.protocol import Factory, Protocol

    from gateway.couch import CouchTimeout

    class Silent(Protocol):
        pass

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        database = Database("x", url=f"http://127.0.0.1:{port.getHost().port}",
                            reactor=reactor, pool=pool, timeout=0.5)
        with pytest.raises(CouchTimeout) as timeout:
            await database.info()
        assert timeout.value.status == 504
    finally:
        await port.stopListening()


async def test_cancel_aborts_a_request(reactor: Any, pool: Any) -> None:
    from twisted.internet.protocol import Factory, Protocol

    class Silent(Protocol):
        pass

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        database = Database("x", url=f"http://127.0.0.1:{port.getHost().port}",
                            reactor=reactor, pool=pool, timeout=None)
        pending = database.info()
        reactor.callLater(0.1, pending.cancel)
        with pytest.raises(defer.CancelledError):
            await pending
    finally:
        await port.stopListening()


async def test_session_renewal_covers_attachments(
    couch_backend: CouchBackend, admin: CouchServer, make_user: Any, db: Database
) -> None:
    """An expired session is renewed for attachment reads and byte uploads too."""
    user, auth, as_user = await member_session(admin, make_user, db)
    await db.put_attachment("d", "a.txt", b"hello", content_type="text/plain")
    expired = expired_session(user.name)
    auth._cookie = expired
    assert await as_user.get_attachment("d", "a.txt") == b"hello"
    assert auth._cookie != expired
    auth._cookie = expired
    chunks: list[bytes] = []
    assert await as_user.download_attachment("d", "a.txt", chunks.append) == 5
    assert b"".join(chunks) == b"hello"
    auth._cookie = expired
    doc = await as_user.get("d")
    auth._cookie = expired
    result = await as_user.put_attachment(doc, "b.txt", b"bytes again", content_type="text/plain")
    assert result["ok"] is True and doc["_rev"] == result["rev"]
    assert await db.get_attachment("d", "b.txt") == b"bytes again"


async def test_batch_ok_answer_without_rev(db: Database) -> None:
    """``batch=ok`` answers 202 without a rev in CouchDB: the doc gets its id, no stale rev."""
    doc: dict[str, Any] = {"_id": "batched", "v": 1}
    result = await db.save(doc, batch="ok")
    assert result["ok"] is True and doc["_id"] == "batched"
    assert doc.get("_rev") == result.get("rev")  # set only when the server sent one


async def test_original_put_attachment_keyword_content_type(db: Database) -> None:
    """The original Wallaby spelled it ``contentType=``; code written for it still runs."""
    doc: dict[str, Any] = {"_id": "orig"}
    await db.save(doc)
    await db.put_attachment(doc, "n.png", b"\x89PNG", contentType="image/png")
    stored = await db.get("orig")
    assert stored["_attachments"]["n.png"]["content_type"] == "image/png"


async def test_json_requests_ask_for_json(reactor: Any, pool: Any) -> None:
    """Every JSON request says ``Accept: application/json``: without it CouchDB answers
    ``attachments=true`` and ``open_revs`` with multipart (a missing Accept is ``*/*``)."""
    from twisted.internet.protocol import Factory, Protocol

    seen: list[bytes] = []

    class Recorder(Protocol):
        def dataReceived(self, data: bytes) -> None:
            seen.append(data)
            if b"\r\n\r\n" in b"".join(seen):
                body = b'{"_id":"x","_rev":"1-a"}'
                self.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    port = reactor.listenTCP(0, Factory.forProtocol(Recorder), interface="127.0.0.1")
    try:
        database = Database("x", url=f"http://127.0.0.1:{port.getHost().port}",
                            reactor=reactor, pool=pool, timeout=5)
        assert (await database.get("x", attachments=True))["_id"] == "x"
        head = b"".join(seen).split(b"\r\n\r\n")[0].lower()
        assert b"\r\naccept: application/json" in head
        assert b"attachments=true" in head
    finally:
        await port.stopListening()
