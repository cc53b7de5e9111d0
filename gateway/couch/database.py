"""``Database``: the original Wallaby CouchDB API, every method returning a Deferred."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IResponse

from gateway.couch._deferred import returns_deferred
from gateway.couch.attachments import (
    AttachmentContent,
    AttachmentSink,
    as_body_producer,
    stream_into,
)
from gateway.couch.auth import Auth, BasicAuth, NoAuth
from gateway.couch.bulk import align_bulk_results
from gateway.couch.transport import CouchTransport, Reactor, read_body
from gateway.couch.urls import attachment_path, doc_path
from gateway.couch.views import ViewResult, split_view_params, view_path

if TYPE_CHECKING:
    from gateway.couch.changes.subscriptions import ChangeCallback, ChangeSubscriptions

__all__ = ["Database", "Document"]

Document = MutableMapping[str, Any]


def _doc_id(doc: Mapping[str, Any] | str) -> str:
    if isinstance(doc, str):
        return doc
    doc_id = doc.get("_id")
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError("the document has no '_id'")
    return doc_id


def _rev_of(doc: Mapping[str, Any] | str) -> str | None:
    if isinstance(doc, str):
        return None
    rev = doc.get("_rev")
    return rev if isinstance(rev, str) else None


class Database:
    """One CouchDB database.

    Args:
        name: The database name.
        username: User name for Basic authentication (the original API).
        password: Its password.
        url: The server URL (credentials in it are used when ``username`` is absent).
        auth: Any :class:`~gateway.couch.auth.Auth`; overrides ``username``/``password``.
        reactor: The reactor; the global one only when omitted (legacy scripts).
        pool: A shared persistent connection pool.
        timeout: Seconds each request may take.
        transport: A ready transport (e.g. one shared by a server object); overrides
            ``url``, ``auth``, ``reactor``, ``pool`` and ``timeout``.

    Example::

        db = Database("todo", username="u", password="p", url="http://127.0.0.1:5984")
        doc = {"_id": "a", "title": "milk"}
        await db.save(doc)          # doc["_rev"] is now set
    """

    def __init__(
        self,
        name: str,
        username: str | None = None,
        password: str | None = None,
        url: str = "http://localhost:5984",
        *,
        auth: Auth | None = None,
        reactor: Reactor | None = None,
        pool: HTTPConnectionPool | None = None,
        timeout: float | None = 30.0,
        transport: CouchTransport | None = None,
    ) -> None:
        if not name:
            raise ValueError("a database needs a name")
        self.name = name
        if transport is None:
            if reactor is None:
                from gateway.couch._reactor import default_reactor

                reactor = default_reactor()
            if auth is None and username is not None:
                auth = BasicAuth(username, password or "")
            transport = CouchTransport(url, reactor, pool=pool, auth=auth, timeout=timeout)
        self.transport = transport
        self._subscriptions: ChangeSubscriptions | None = None

    def __repr__(self) -> str:
        return f"Database({self.name!r}, url={self.transport.base_url!r})"

    # -- database ---------------------------------------------------------------

    @returns_deferred
    async def info(self) -> dict[str, Any]:
        """``GET /db``: the database's information."""
        result: dict[str, Any] = await self.transport.request("GET", [self.name])
        return result

    @returns_deferred
    async def exists(self) -> bool:
        """Whether the database exists (``HEAD /db``)."""
        answer = await self.transport.send("HEAD", [self.name], raise_for_status=False)
        if answer.status in (200, 404):
            return answer.status == 200
        from gateway.errors import CouchError

        raise CouchError.from_response(answer.status, answer.body)

    @returns_deferred
    async def create(self, *, partitioned: bool | None = None) -> dict[str, Any]:
        """``PUT /db``: create the database (412 ``PreconditionFailed`` if it exists)."""
        params = {"partitioned": partitioned} if partitioned is not None else None
        result: dict[str, Any] = await self.transport.request("PUT", [self.name], params=params)
        return result

    @returns_deferred
    async def destroy(self) -> dict[str, Any]:
        """``DELETE /db``: delete the database and everything in it."""
        result: dict[str, Any] = await self.transport.request("DELETE", [self.name])
        return result

    @returns_deferred
    async def security(self) -> dict[str, Any]:
        """``GET /db/_security``."""
        result: dict[str, Any] = await self.transport.request("GET", [self.name, "_security"])
        return result

    @returns_deferred
    async def set_security(self, security: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /db/_security`` (admins and members; needs admin rights)."""
        result: dict[str, Any] = await self.transport.request(
            "PUT", [self.name, "_security"], json=dict(security)
        )
        return result

    # -- documents --------------------------------------------------------------

    @returns_deferred
    async def get(self, doc_id: str, **params: Any) -> dict[str, Any]:
        """``GET /db/docid``.

        Args:
            doc_id: Any id, including ``_design/x`` and ``_local/x``.
            **params: ``rev``, ``revs``, ``revs_info``, ``conflicts``, ``attachments``,
                ``open_revs``, ``latest``, ``local_seq``, ``meta`` … as CouchDB names them.

        Raises:
            NotFound: No such document (or it was deleted).
        """
        result: dict[str, Any] = await self.transport.request(
            "GET", doc_path(self.name, doc_id), params=params
        )
        return result

    @returns_deferred
    async def save(self, doc: Document, **params: Any) -> dict[str, Any]:
        """Create or update a document; ``doc["_id"]``/``doc["_rev"]`` are updated in place.

        ``PUT /db/docid`` when the document has an ``_id``, ``POST /db`` otherwise.

        Raises:
            Conflict: ``doc["_rev"]`` is not the current revision.
        """
        doc_id = doc.get("_id")
        if doc_id:
            result: dict[str, Any] = await self.transport.request(
                "PUT", doc_path(self.name, str(doc_id)), json=dict(doc), params=params or None
            )
        else:
            result = await self.transport.request(
                "POST", [self.name], json=dict(doc), params=params or None
            )
        if result.get("ok"):
            doc["_id"] = result["id"]
            if "rev" in result:  # batch=ok answers 202 without one
                doc["_rev"] = result["rev"]
        return result

    @returns_deferred
    async def delete(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """``DELETE /db/docid?rev=…`` using ``doc["_rev"]``."""
        rev = _rev_of(doc)
        if rev is None:
            raise ValueError("deleting a document needs its '_rev'")
        result: dict[str, Any] = await self.transport.request(
            "DELETE", doc_path(self.name, _doc_id(doc)), params={"rev": rev}
        )
        return result

    @returns_deferred
    async def bulk_save(self, docs: list[Document], **params: Any) -> list[dict[str, Any]]:
        """``POST /db/_bulk_docs``; each saved doc's ``_id``/``_rev`` are updated in place.

        A document without an ``_id`` is sent with a random one (32 hex digits, like
        CouchDB's ``random`` UUIDs) instead of letting the server choose, so that every
        result pairs with its document by id whatever order the server answers in.

        Returns:
            One result per document, in the order of ``docs`` (failed ones carry
            ``error``), paired by id: see :func:`~gateway.couch.bulk.align_bulk_results`.
            With ``new_edits=False`` (replication), CouchDB's answer as it is: it lists
            only the documents it refused, and no document is changed.
        """
        sent = [dict(doc) if doc.get("_id") else {**doc, "_id": uuid4().hex} for doc in docs]
        answer: list[dict[str, Any]] = await self.transport.request(
            "POST", [self.name, "_bulk_docs"], json={"docs": sent, **params}
        )
        if params.get("new_edits") is False:
            return answer  # replicated revisions: CouchDB lists only the failures
        results = align_bulk_results(sent, answer)
        for doc, result in zip(docs, results, strict=True):
            if "rev" in result and "error" not in result:
                doc["_id"] = result["id"]
                doc["_rev"] = result["rev"]
        return results

    @returns_deferred
    async def bulk_get(
        self, docs: Iterable[Mapping[str, Any] | str], **params: Any
    ) -> dict[str, Any]:
        """``POST /db/_bulk_get`` for ids or ``{"id": …, "rev": …}`` specs."""
        specs = [{"id": d} if isinstance(d, str) else dict(d) for d in docs]
        result: dict[str, Any] = await self.transport.request(
            "POST", [self.name, "_bulk_get"], json={"docs": specs}, params=params or None
        )
        return result

    # -- attachments ------------------------------------------------------------

    @returns_deferred
    async def put_attachment(
        self,
        doc: Document | str,
        name: str,
        content: AttachmentContent,
        content_type: str = "application/octet-stream",
        *,
        contentType: str | None = None,  # noqa: N803 - the original Wallaby's name
    ) -> dict[str, Any]:
        """``PUT /db/docid/name?rev=…``, streaming the content; updates ``doc["_rev"]``.

        The request's timeout counts silence: an upload lives as long as it moves.
        Bytes are sent as they are (and sent again if a session had to be renewed).

        Args:
            doc: The document (its ``_rev`` is used and updated) or a new document's id.
            name: The attachment name (may contain ``/``).
            content: Bytes, a binary file object (never read whole), or a body producer.
            content_type: The attachment's MIME type.
            contentType: The original Wallaby's name for ``content_type``.
        """
        rev = _rev_of(doc)
        body = (
            bytes(content) if isinstance(content, (bytes, bytearray, memoryview))
            else as_body_producer(content)
        )
        result: dict[str, Any] = await self.transport.request(
            "PUT",
            attachment_path(self.name, _doc_id(doc), name),
            params={"rev": rev} if rev else None,
            data=body,
            headers={"Content-Type": contentType or content_type},
        )
        if result.get("ok") and not isinstance(doc, str):
            doc["_rev"] = result["rev"]
        return result

    @returns_deferred
    async def get_attachment(self, doc: Mapping[str, Any] | str, name: str) -> bytes:
        """The attachment's content as bytes (for small attachments; see ``download``).

        The request's timeout applies to the headers and then to every silence in the body.
        """
        response = await self.transport.open_stream(
            "GET", attachment_path(self.name, _doc_id(doc), name)
        )
        return await read_body(
            response, clock=self.transport.reactor, timeout=self.transport.timeout
        )

    @returns_deferred
    async def open_attachment(
        self,
        doc: Mapping[str, Any] | str,
        name: str,
        *,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        raise_for_status: bool = True,
    ) -> IResponse:
        """Start downloading an attachment and return the unread response.

        The caller streams ``response`` (e.g. with ``treq.collect``) and sees CouchDB's
        headers (``Content-Type``, ``Content-Length``, ``ETag``); ``headers`` may carry
        ``Range`` or ``If-None-Match``.
        """
        rev = _rev_of(doc)
        return await self.transport.open_stream(
            method,
            attachment_path(self.name, _doc_id(doc), name),
            params={"rev": rev} if rev else None,
            headers=headers,
            raise_for_status=raise_for_status,
        )

    @returns_deferred
    async def download_attachment(
        self, doc: Mapping[str, Any] | str, name: str, sink: AttachmentSink
    ) -> int:
        """Stream an attachment into a file object, consumer or callable.

        An ``IConsumer`` gets the download as its producer: when it pauses, reading stops
        (nothing piles up in memory) and so does the timeout, which otherwise fires
        after that many seconds without a byte from CouchDB.

        Returns:
            The number of bytes written.

        Raises:
            CouchTimeout: CouchDB stopped sending for longer than the timeout.
        """
        response = await self.transport.open_stream(
            "GET", attachment_path(self.name, _doc_id(doc), name)
        )
        return await stream_into(
            response, sink, clock=self.transport.reactor, timeout=self.transport.timeout
        )

    @returns_deferred
    async def delete_attachment(self, doc: Document | str, name: str) -> dict[str, Any]:
        """``DELETE /db/docid/name?rev=…``; updates ``doc["_rev"]``."""
        rev = _rev_of(doc)
        if rev is None:
            raise ValueError("deleting an attachment needs the document's '_rev'")
        result: dict[str, Any] = await self.transport.request(
            "DELETE", attachment_path(self.name, _doc_id(doc), name), params={"rev": rev}
        )
        if result.get("ok") and not isinstance(doc, str):
            doc["_rev"] = result["rev"]
        return result

    # -- views and queries ------------------------------------------------------

    @returns_deferred
    async def view(self, name: str, **params: Any) -> ViewResult:
        """Query a view; the rows come back as a list with ``total_rows``/``offset``.

        Args:
            name: ``_design/d/_view/v``, ``d/v`` or ``_all_docs``.
            **params: Any view parameter: ``key``, ``keys`` (sent as a POST body),
                ``startkey``/``endkey`` (JSON-encoded), ``limit`` (alias ``count``),
                ``skip``, ``descending``, ``group``, ``group_level``, ``reduce``,
                ``include_docs``, ``inclusive_end``, ``update_seq``, ``stable``, ``update``.
        """
        query, body = split_view_params(params)
        path = view_path(self.name, name)
        if body is None:
            answer = await self.transport.request("GET", path, params=query)
        else:
            answer = await self.transport.request("POST", path, params=query, json=body)
        return ViewResult(answer)

    def all_docs(self, **params: Any) -> Deferred[ViewResult]:
        """``_all_docs`` with any view parameter (see :meth:`view`); returns a Deferred."""
        return self.view("_all_docs", **params)

    @returns_deferred
    async def find(
        self,
        selector: Mapping[str, Any],
        *,
        fields: list[str] | None = None,
        sort: list[Any] | None = None,
        limit: int | None = None,
        skip: int | None = None,
        use_index: str | list[str] | None = None,
        bookmark: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Mango ``POST /db/_find``.

        Returns:
            CouchDB's answer: ``docs``, and ``bookmark``/``warning`` when present.
        """
        body: dict[str, Any] = {"selector": dict(selector), **extra}
        for key, value in (
            ("fields", fields),
            ("sort", sort),
            ("limit", limit),
            ("skip", skip),
            ("use_index", use_index),
            ("bookmark", bookmark),
        ):
            if value is not None:
                body[key] = value
        result: dict[str, Any] = await self.transport.request(
            "POST", [self.name, "_find"], json=body
        )
        return result

    @returns_deferred
    async def create_index(
        self, fields: list[Any], *, name: str | None = None, ddoc: str | None = None
    ) -> dict[str, Any]:
        """Mango ``POST /db/_index`` for a JSON index on ``fields``."""
        body: dict[str, Any] = {"index": {"fields": fields}, "type": "json"}
        if name:
            body["name"] = name
        if ddoc:
            body["ddoc"] = ddoc
        result: dict[str, Any] = await self.transport.request(
            "POST", [self.name, "_index"], json=body
        )
        return result

    # -- changes ----------------------------------------------------------------

    def _feeds(self) -> ChangeSubscriptions:
        if self._subscriptions is None:
            from gateway.couch.changes.subscriptions import ChangeSubscriptions

            self._subscriptions = ChangeSubscriptions(self.transport, self.name)
        return self._subscriptions

    def changes(
        self, cb: ChangeCallback, since: Any = "now", **options: Any
    ) -> Deferred[None]:
        """Register ``cb(changes, viewID=None)`` for the database's changes.

        One continuous ``_changes`` connection is kept per distinct (filter, view,
        doc_ids, selector, include_docs, …) and shared by every callback registered
        with those options; it reconnects from the last delivered seq after any fault.

        Args:
            cb: Called with each batch of change rows (a list) and ``viewID`` (the view
                name for ``filter="_view"``, else ``None``).
            since: Opaque seq to start after, ``0`` for the beginning, or ``"now"``.
            **options: ``filter`` (``ddoc/name``, ``_doc_ids``, ``_selector``, ``_view``),
                ``view``, ``doc_ids``, ``selector``, ``include_docs``, ``style`` and any
                other ``_changes`` parameter (e.g. filter function query parameters).

        Returns:
            A Deferred that fires once the feed is registered.
        """
        return self._feeds().subscribe(cb, since=since, **options)

    def unchanges(
        self, cb: ChangeCallback | None = None, since: Any = "now", **options: Any
    ) -> Deferred[bool]:
        """Remove a registration made with the same ``since`` and options.

        Args:
            cb: Remove only this callback (the original Wallaby's first argument); by
                default the registration goes with all its callbacks.
            since: The registration's ``since``.
            **options: The registration's options.

        The shared feed is closed when its last registration goes.

        Returns:
            A Deferred firing with ``True`` once something was removed (and its feed
            closed), ``False`` when no registration matched.
        """
        return self._feeds().unsubscribe(since=since, cb=cb, **options)

    @returns_deferred
    async def close(self) -> None:
        """Stop every changes feed of this object."""
        if self._subscriptions is not None:
            await self._subscriptions.close()


def anonymous(database: Database) -> Database:
    """The same database without credentials (useful to check access rules)."""
    return Database(database.name, transport=database.transport.with_auth(NoAuth()))
