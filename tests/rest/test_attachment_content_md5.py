"""``Content-MD5`` of attachments, both ways, as CouchDB 3 handles it.

CouchDB 3 (``chttpd_db.erl``, ``db_attachment_req``):

* on a download it sends ``Content-MD5`` (the stored digest of the whole attachment)
  only with a whole 200 answer, never with a 206 range;
* on an upload it checks the request's ``Content-MD5`` and refuses a body that does not
  match: 400 ``content_md5_mismatch`` "Possible message corruption." (``chttpd.erl``
  ``error_info(md5_mismatch)``), so nothing corrupted is stored.

pouchdb-server does neither, so these tests put a relay in front of it that behaves as
CouchDB does on exactly these two points (and cuts ranges as CouchDB does, like
``tests/support/couchranges.py``). Through the gateway:

* a range the gateway cuts itself (with ``If-Range``, it asks CouchDB for the whole body
  and cuts it) carries no ``Content-MD5``: the upstream 200's digest is of the whole;
* the client's ``Content-MD5`` goes upstream with the body, so a corrupted upload is
  refused as CouchDB refuses it, and one the gateway cannot decode is a 400.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from gateway.couch import Database
from tests.conftest import CouchBackend
from tests.rest.conftest import StartGateway, basic

_HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
               b"accept-encoding", b"range", b"if-range"}


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class Md5CouchRelay(Resource):
    """Relays to pouchdb-server, answering ``Content-MD5`` as CouchDB 3 does."""

    isLeaf = True  # noqa: N815

    def __init__(self, upstream: str, reactor: Any) -> None:
        super().__init__()
        self.upstream = upstream
        self.reactor = reactor

    def render(self, request: Any) -> Any:
        Deferred.fromCoroutine(self._relay(request)).addErrback(
            lambda failure: (request.setResponseCode(502), request.finish()))
        return NOT_DONE_YET

    async def _relay(self, request: Any) -> None:
        path = request.uri.decode("latin-1")
        is_attachment = len([s for s in path.split("?", 1)[0].split("/") if s]) >= 3
        body = request.content.read()
        claimed = request.getHeader("content-md5")
        if request.method == b"PUT" and is_attachment and claimed is not None \
                and claimed != _md5(body):
            request.setResponseCode(400)
            request.setHeader("Content-Type", "application/json")
            request.write(b'{"error":"content_md5_mismatch",'
                          b'"reason":"Possible message corruption."}')
            request.finish()
            return
        headers = Headers({name: values for name, values in request.requestHeaders.getAllRawHeaders()
                           if name.lower() not in _HOP_BY_HOP})
        response = await treq.request(request.method.decode(), self.upstream + path,
                                      headers=headers, data=body or None, reactor=self.reactor,
                                      persistent=False)
        content = await treq.content(response)
        status = response.code
        wanted = request.getHeader("range")
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        if is_attachment and status == 200 and request.method in (b"GET", b"HEAD"):
            request.setHeader("Accept-Ranges", "bytes")
            if wanted and wanted.startswith("bytes=") and "," not in wanted:
                first, _, last = wanted[6:].partition("-")
                start = int(first) if first else max(0, len(content) - int(last))
                end = min(int(last), len(content) - 1) if first and last else len(content) - 1
                request.setHeader("Content-Range", f"bytes {start}-{end}/{len(content)}")
                content, status = content[start:end + 1], 206
            else:
                request.setHeader("Content-MD5", _md5(content))  # whole answers only
        request.setResponseCode(status)
        request.setHeader("Content-Length", str(len(content)))
        if request.method != b"HEAD":
            request.write(content)
        request.finish()


async def _gateway_behind_relay(start_gateway: StartGateway, couch_backend: CouchBackend,
                                reactor: Any) -> tuple[Any, Any]:
    port = reactor.listenTCP(0, Site(Md5CouchRelay(couch_backend.url, reactor)),
                             interface="127.0.0.1")
    gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{port.getHost().port}")
    auth = basic(couch_backend.admin_username, couch_backend.admin_password)
    return port, gateway.client.with_headers(auth)


async def test_a_range_cut_by_the_gateway_carries_no_digest_of_the_whole(
    start_gateway: StartGateway, couch_backend: CouchBackend, reactor: Any, db: Database,
) -> None:
    port, client = await _gateway_behind_relay(start_gateway, couch_backend, reactor)
    try:
        data = os.urandom(5000)
        await db.put_attachment("doc", "a.bin", data, content_type="application/octet-stream")
        url = f"/api/v1/db/{db.name}/docs/doc/attachments/a.bin"
        whole = await client.get(url)
        assert whole.status == 200 and whole.header("Content-MD5") == _md5(data)
        etag = whole.header("ETag")

        plain = await client.get(url, headers={"Range": "bytes=10-19"})  # cut by "CouchDB"
        assert plain.status == 206 and plain.header("Content-MD5") is None

        part = await client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
        assert part.status == 206 and part.body == data[10:20]
        md5 = part.header("Content-MD5")
        assert md5 in (None, _md5(part.body)), (
            f"206 of 10 bytes carries Content-MD5 {md5}, the digest of all {len(data)} bytes")
    finally:
        await port.stopListening()


async def test_an_upload_whose_content_md5_does_not_match_is_refused(
    start_gateway: StartGateway, couch_backend: CouchBackend, reactor: Any, db: Database,
) -> None:
    port, client = await _gateway_behind_relay(start_gateway, couch_backend, reactor)
    try:
        rev = (await db.save({"_id": "doc"}))["rev"]
        sent = b"the bytes as they arrived, corrupted on the way"
        meant = b"the bytes as the client meant to send them......"
        url = f"/api/v1/db/{db.name}/docs/doc/attachments/a.bin?rev={rev}"
        reply = await client.put(url, data=sent, headers={
            "Content-Type": "application/octet-stream", "Content-MD5": _md5(meant)})
        assert reply.status == 400, (reply.status, reply.json)
        assert reply.json["error"] == "content_md5_mismatch"
    finally:
        await port.stopListening()


async def test_an_upload_whose_content_md5_matches_is_stored(
    start_gateway: StartGateway, couch_backend: CouchBackend, reactor: Any, db: Database,
) -> None:
    port, client = await _gateway_behind_relay(start_gateway, couch_backend, reactor)
    try:
        rev = (await db.save({"_id": "doc"}))["rev"]
        data = os.urandom(3000)
        url = f"/api/v1/db/{db.name}/docs/doc/attachments/a.bin?rev={rev}"
        reply = await client.put(url, data=data, headers={
            "Content-Type": "application/octet-stream", "Content-MD5": _md5(data)})
        assert reply.status == 201, (reply.status, reply.json)
        assert (await client.get(f"/api/v1/db/{db.name}/docs/doc/attachments/a.bin")).body == data
    finally:
        await port.stopListening()


async def test_an_upload_whose_content_md5_is_not_base64_is_a_400(
    start_gateway: StartGateway, couch_backend: CouchBackend, reactor: Any, db: Database,
) -> None:
    port, client = await _gateway_behind_relay(start_gateway, couch_backend, reactor)
    try:
        rev = (await db.save({"_id": "doc"}))["rev"]
        url = f"/api/v1/db/{db.name}/docs/doc/attachments/a.bin?rev={rev}"
        reply = await client.put(url, data=b"hello", headers={
            "Content-Type": "application/octet-stream", "Content-MD5": "not base64!"})
        assert reply.status == 400, (reply.status, reply.json)
        assert reply.json["error"] == "bad_request" and "Content-MD5" in reply.json["reason"]
        assert "_attachments" not in await db.get("doc")
    finally:
        await port.stopListening()
