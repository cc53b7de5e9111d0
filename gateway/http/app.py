"""The REST gateway: a class-bound Klein app whose routes are the API contract.

Every route validates its request against ``api_schema/openapi.yaml``
(:mod:`gateway.http.contract`), identifies the caller (:func:`gateway.identity.identify`)
and calls CouchDB *as that caller* (``CouchServer.as_identity``) over one shared
persistent pool. Errors are mapped once, by :meth:`GatewayApp.on_error`, through
:func:`gateway.errors.error_body`.

Build and serve::

    app = GatewayApp(settings, couch=CouchServer(url, reactor=reactor, pool=pool),
                     reactor=reactor)
    app.mount(b"/api/v1/changes", websocket_resource)   # before serving
    site = app.site()                                    # a twisted.web Site

Mounting: :meth:`GatewayApp.mount` (or the ``extra_resources`` argument) serves an
``IResource`` at an exact path, after the front door (request id, CORS, rate limit,
traversal checks, access log) and instead of the router — the WebSocket endpoint
``/api/v1/changes`` is mounted so, and authenticates with the same
:func:`gateway.identity.identify`, passing :attr:`GatewayApp.identities` as cache.

The routes are declared here; what they share lives beside them: relaying to CouchDB
(:mod:`~gateway.http.forwarding`), reading a request (:mod:`~gateway.http.request_args`),
the access checks (:mod:`~gateway.http.guards`), the session cookie
(:mod:`~gateway.http.session`), ``/ready`` (:mod:`~gateway.http.readiness`), upstream
latencies (:mod:`~gateway.http.upstream_timing`) and ``/static/``
(:mod:`~gateway.http.static_files`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.static import File
from werkzeug import exceptions as wz
from werkzeug import routing as wz_routing

from gateway.config import Settings
from gateway.couch import CouchServer
from gateway.couch.auth import ForwardedAuth
from gateway.couch.bulk import in_request_order
from gateway.couch.transport import Reactor
from gateway.couch.urls import attachment_path, doc_path
from gateway.errors import (
    Conflict,
    GatewayError,
    InvalidRequest,
    MethodNotAllowedHere,
    RouteNotFound,
    ShuttingDown,
)
from gateway.http import paths
from gateway.http.accesslog import AccessLog
from gateway.http.attachments import Attachments
from gateway.http.client_address import ClientAddress
from gateway.http.conditional import (
    DOC_META_OPTIONS,
    if_match_revision,
)
from gateway.http.contract import Contract, as_served, load_contract
from gateway.http.cors import Cors
from gateway.http.docs_page import DOCS_HEADERS, DOCS_HTML
from gateway.http.document_bodies import check_documents
from gateway.http.forwarding import Forwarder
from gateway.http.guards import require_db_admin, require_reader, require_server_admin
from gateway.http.login_guard import FailedLogins
from gateway.http.metrics import Metrics
from gateway.http.ratelimit import RateLimiter
from gateway.http.readiness import Readiness
from gateway.http.request import shutdown_cut
from gateway.http.request_args import client_key, decode_query, json_body
from gateway.http.responses import json_response, render_error
from gateway.http.session import (
    presented_credentials,
    presented_session,
    session_cookie,
    session_refresh,
)
from gateway.http.site import FrontDoor, GatewaySite, InFlight
from gateway.http.splice_relay import Splicer
from gateway.http.static_files import STATIC_DIR, StaticFiles, page_headers
from gateway.http.upstream_timing import UpstreamTimer
from gateway.identity import Identity, IdentityCache, identify

__all__ = ["STATIC_DIR", "GatewayApp"]

_PREFIX = "/api/v1"
_DB = _PREFIX + "/db/<db>"


class _Klein(Klein):
    """Klein, keeping each running route handler's Deferred on its request.

    The shutdown cancels the handlers still running when its grace is over
    (:meth:`~gateway.http.request.GatewayRequest.stop_for_shutdown`).
    """

    def execute_endpoint(self, endpoint: str, request: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().execute_endpoint(endpoint, request, *args, **kwargs)
        if isinstance(result, Deferred) and not result.called and hasattr(request, "handler"):
            request.handler = result
        return result


class GatewayApp:
    """The gateway's HTTP application.

    Args:
        settings: Configuration.
        couch: The upstream server; its own credentials (service credentials) are used
            only by ``/ready``. Users' calls use ``couch.as_identity(...)``.
        reactor: The reactor (clock for rate limits, caches and latencies).
        contract: The API contract (loaded from ``api_schema/openapi.yaml`` if omitted).
        extra_resources: Resources served at exact paths (see :meth:`mount`).
        static_dir: Folder served at ``/static/`` (``/`` serves its ``index.html``).

    ``settings``, ``couch`` and the upstream timer are given to the collaborators
    (relay, readiness, site) when the app is built: replace them by building another.
    """

    app = _Klein()

    def __init__(
        self,
        settings: Settings,
        *,
        couch: CouchServer,
        reactor: Reactor,
        contract: Contract | None = None,
        extra_resources: Mapping[bytes, IResource] | None = None,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.settings = settings
        self.couch = couch
        self.reactor = reactor
        self.contract = contract or load_contract()
        self.metrics = Metrics()
        #: Awaits an upstream call and records its latency for the request's route.
        self._timed = UpstreamTimer(self.metrics, reactor.seconds)
        self.in_flight = InFlight()
        #: Zero-copy attachment downloads (see gateway.http.splice_relay).
        self.splicer = Splicer(reactor, shutdown_grace=settings.shutdown_grace,
                               stall_timeout=settings.send_stall_timeout)
        self.splicer.enabled = self.splicer.enabled and settings.splice_downloads
        self.splicer.uploads_enabled = self.splicer.uploads_enabled and settings.splice_uploads
        self.metrics.add_collector(self.splicer.render_metrics)
        self.forwarder = Forwarder(settings, reactor, self._timed)
        self.readiness = Readiness(couch, self._timed)
        self.attachments = Attachments(settings, service=couch, reactor=reactor,
                                       splicer=self.splicer, timed=self._timed)
        self.identities = IdentityCache(clock=reactor.seconds)
        self.limiter = RateLimiter(
            settings.rate_limit_per_second, settings.rate_limit_burst, reactor.seconds
        )
        #: Password guessing: failed logins per (client, account).
        self.failed_logins = FailedLogins(
            reactor.seconds, settings.login_max_failures, settings.login_lockout_seconds
        )
        self.mounts: dict[bytes, IResource] = dict(extra_resources or {})
        self.static_dir = static_dir
        self._spec_json = json.dumps(
            as_served(self.contract.document, settings.cookie_name)).encode()
        #: Set when shutdown begins: ``/ready`` fails at once, so load balancers stop
        #: sending new clients while WebSockets close and requests finish.
        self.draining = False

    # -- assembly --------------------------------------------------------------

    def mount(self, path: bytes, resource: IResource) -> None:
        """Serve ``resource`` at exactly ``path`` (e.g. ``b"/api/v1/changes"``)."""
        self.mounts[path] = resource

    def resource(self) -> IResource:
        """The root resource: the front door in front of the router."""
        return FrontDoor(
            self.app.resource(),
            clock=self.reactor.seconds,
            metrics=self.metrics,
            access_log=AccessLog(self.settings.log_format),
            cors=Cors(self.settings.cors_origins),
            limiter=self.limiter,
            in_flight=self.in_flight,
            mounts=self.mounts,
            client_address=ClientAddress(self.settings.trusted_proxies,
                                         self.settings.ipv6_client_prefix),
            methods_of=_methods_of,
        )

    def site(self) -> GatewaySite:
        """A ``Site`` serving :meth:`resource`."""
        site = GatewaySite(self.resource(), self.settings.max_attachment_bytes,
                           self.settings.max_body_bytes,
                           header_timeout=self.settings.header_timeout or None)
        site.timeOut = self.settings.idle_timeout or None
        return site

    # -- helpers ---------------------------------------------------------------

    async def identify(self, request: Any) -> Identity:
        """Authenticate the request (see :mod:`gateway.identity`)."""
        headers, cookies = presented_credentials(request)
        identity = await identify(
            headers, cookies, self.couch, self.settings, cache=self.identities,
            client=client_key(request), failed_logins=self.failed_logins,
        )
        setattr(request, "user_name", identity.name)  # noqa: B010 - for the access log
        presented = presented_session(headers, cookies, self.settings)
        if presented is not None:
            value, bearer = presented
            request.session_refresh = session_refresh(self.settings, identity, value,
                                                      bearer=bearer)
        return identity

    async def _begin(
        self, request: Any, operation: str, **path: str
    ) -> tuple[CouchServer, dict[str, Any]]:
        """Label, validate and authenticate a request; returns the user's server and query."""
        query = self._checked(request, operation, **path)
        identity = await self.identify(request)
        setattr(request, "identity", identity)  # noqa: B010 - for the guards below
        return self.couch.as_identity(identity.auth), query

    def _checked(self, request: Any, operation: str, **path: str) -> dict[str, Any]:
        """Label a request with its operation and validate its path and query against it.

        Returns:
            The coerced query parameters.
        """
        setattr(request, "route", operation)  # noqa: B010 - metrics label
        self.contract.check_path(operation, path)
        return self.contract.check_query(operation, decode_query(request))

    def _json_body(self, request: Any, operation: str) -> Any:
        """The request's JSON body, checked against ``operation`` and the size cap."""
        return json_body(request, operation, self.contract, self.settings.max_body_bytes)

    # -- errors ----------------------------------------------------------------

    @app.handle_errors
    def on_error(self, request: Any, failure: Failure) -> bytes | None:  # type: ignore[misc]
        """Map every failure to the error envelope, once."""
        exc: BaseException = failure.value or Exception("unknown failure")
        if getattr(request, "shutting_down", False):
            # Cancelled (or its call to CouchDB cut) by the end of the shutdown's grace:
            # the gateway's doing, not CouchDB's.
            exc = shutdown_cut(request)
        elif isinstance(exc, CancelledError):
            return None  # the client went away: nobody to answer
        if isinstance(exc, wz.MethodNotAllowed):
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            request.setHeader("Allow", allowed)  # RFC 9110 15.5.6: a 405 names them
            exc = MethodNotAllowedHere(f"this route takes {allowed}")
        elif isinstance(exc, wz.HTTPException):
            exc = RouteNotFound("no such route")
        if getattr(request, "startedWriting", False):
            # Headers are gone (a stream broke midway): all we can do is cut it short,
            # and say why in the access log and the error metrics.
            if isinstance(exc, GatewayError):
                setattr(request, "error_code", exc.error)  # noqa: B010
            # Klein finishes the request before the abort takes effect: mark it here.
            setattr(request, "cut_short", True)  # noqa: B010
            transport = getattr(getattr(request, "channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()
            return None
        return render_error(request, exc)

    # -- operations ------------------------------------------------------------

    @app.route("/health", methods=["GET"])
    def health(self, request: Any) -> bytes:
        """The process is alive."""
        self._checked(request, "getHealth")
        return json_response(request, 200, {"ok": True})

    @app.route("/ready", methods=["GET"])
    async def ready(self, request: Any) -> bytes:
        """CouchDB is up and takes the service identity (``/_up`` where it has one).

        A change of verdict is logged once (probes ask every few seconds), so an operator
        sees why the load balancer took the gateway out.
        """
        self._checked(request, "getReady")
        if self.draining:
            raise ShuttingDown("the gateway is shutting down")
        await self.readiness.check(request)
        return json_response(request, 200, {"ok": True})

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request: Any) -> bytes:
        """Prometheus metrics."""
        self._checked(request, "getMetrics")
        request.setHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.render().encode("utf-8")

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: Any) -> bytes:
        """The contract as JSON."""
        self._checked(request, "getOpenApi")
        request.setHeader("Content-Type", "application/json")
        return self._spec_json

    @app.route("/docs", methods=["GET"])
    def docs(self, request: Any) -> bytes:
        """A self-contained page rendering the contract."""
        self._checked(request, "getApiDocs")
        for name, value in DOCS_HEADERS.items():
            request.setHeader(name, value)
        return DOCS_HTML.encode("utf-8")

    @app.route("/static/", branch=True, methods=["GET"])
    def static(self, request: Any) -> IResource:
        """The demo page's assets."""
        setattr(request, "route", "static")  # noqa: B010
        if not self.static_dir.is_dir():
            raise RouteNotFound("no static files")
        page_headers(request)
        return StaticFiles(str(self.static_dir))

    @app.route("/", methods=["GET"])
    def index(self, request: Any) -> IResource:
        """The demo page (``static/index.html``)."""
        setattr(request, "route", "index")  # noqa: B010
        page = self.static_dir / "index.html"
        if not page.is_file():
            raise RouteNotFound("no demo page installed; see /docs")
        page_headers(request)
        request.postpath = []  # the file itself, not a child of it
        return File(str(page), defaultType="text/html")

    # -- session ---------------------------------------------------------------

    @app.route(_PREFIX + "/session", methods=["POST"])
    async def login(self, request: Any) -> bytes:
        """Log in with CouchDB credentials; sets the session cookie, returns a token."""
        self._checked(request, "login")
        body = self._json_body(request, "login")
        token = await self.failed_logins.attempt(
            client_key(request), body["name"],
            lambda: self._timed(request, self.couch.login(body["name"], body["password"])),
            body["password"])
        user = self.couch.as_identity(ForwardedAuth({"Cookie": f"AuthSession={token}"}))
        session = await self._timed(request, user.session())
        context = session.get("userCtx") or {}
        setattr(request, "user_name", context.get("name"))  # noqa: B010
        cookie = session_cookie(self.settings, token)
        request.responseHeaders.addRawHeader(b"Set-Cookie", cookie.encode())
        return json_response(request, 200, {
            "ok": True, "name": context.get("name") or body["name"],
            "roles": list(context.get("roles") or []), "token": token,
        })

    @app.route(_PREFIX + "/session", methods=["GET"])
    async def get_session(self, request: Any) -> bytes:
        """The current user as CouchDB sees it."""
        self._checked(request, "getSession")
        identity = await self.identify(request)
        return json_response(request, 200, {"name": identity.name, "roles": list(identity.roles)})

    @app.route(_PREFIX + "/session", methods=["DELETE"])
    def logout(self, request: Any) -> bytes:
        """Forget the session cookie (CouchDB sessions are stateless: it simply expires)."""
        self._checked(request, "logout")
        cookie = session_cookie(self.settings, "", 0)
        request.responseHeaders.addRawHeader(b"Set-Cookie", cookie.encode())
        return json_response(request, 200, {"ok": True})

    # -- databases -------------------------------------------------------------

    @app.route(_DB, methods=["GET"])
    async def get_database(self, request: Any, db: str) -> bytes:
        """Database information."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "getDatabase", db=name)
        return await self.forwarder.forward(request, couch, "GET", [name], params=query)

    @app.route(_DB, methods=["PUT"])
    async def create_database(self, request: Any, db: str) -> bytes:
        """Create a database (server admins only, as on CouchDB 3)."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "createDatabase", db=name)
        require_server_admin(request)
        return await self.forwarder.forward(request, couch, "PUT", [name], params=query)

    @app.route(_DB, methods=["DELETE"])
    async def delete_database(self, request: Any, db: str) -> bytes:
        """Delete a database (server admins only)."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "deleteDatabase", db=name)
        require_server_admin(request)
        return await self.forwarder.forward(request, couch, "DELETE", [name], params=query)

    # -- documents -------------------------------------------------------------

    @app.route(_DB + "/docs", methods=["POST"])
    async def create_document(self, request: Any, db: str) -> bytes:
        """Create a document with a server id (or the body's ``_id``)."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "createDocument", db=name)
        body = self._json_body(request, "createDocument")
        check_documents([body])
        if "_id" in body:
            paths.body_document_id(body["_id"])
        return await self.forwarder.forward(
            request, couch, "POST", [name], params=query, json=body, rev_etag="rev",
            location=functools.partial(paths.document_url, name),
        )

    @app.route(_DB + "/docs/<docid>", methods=["GET"])
    async def get_document(self, request: Any, db: str, docid: str) -> bytes:
        """Read a document (``rev``, ``conflicts``, ``revs``, ``revs_info``, ``attachments``…)."""
        name, doc_id = paths.database_name(db), paths.document_id(docid)
        couch, query = await self._begin(request, "getDocument", db=name, docid=doc_id)
        plain = not doc_id.startswith("_local/") and not (query and any(
            query.get(option) for option in DOC_META_OPTIONS))
        return await self.forwarder.forward(
            request, couch, "GET", doc_path(name, doc_id), params=query, revalidate=True,
            rev_etag="_rev" if plain else None, stream_large=True,
        )

    @app.route(_DB + "/docs/<docid>", methods=["PUT"])
    async def put_document(self, request: Any, db: str, docid: str) -> bytes:
        """Create or update a document (``If-Match``, ``rev`` or the body's ``_rev``)."""
        name, doc_id = paths.database_name(db), paths.document_id(docid)
        couch, query = await self._begin(request, "putDocument", db=name, docid=doc_id)
        body = self._json_body(request, "putDocument")
        check_documents([body])
        if body.get("_id", doc_id) != doc_id:
            raise InvalidRequest("the body's '_id' differs from the id in the path")
        if_match_revision(request, query)
        return await self.forwarder.forward(
            request, couch, "PUT", doc_path(name, doc_id), params=query, json=body,
            rev_etag="rev", location=functools.partial(paths.document_url, name),
        )

    @app.route(_DB + "/docs/<docid>", methods=["DELETE"])
    async def delete_document(self, request: Any, db: str, docid: str) -> bytes:
        """Delete a document (``rev`` or ``If-Match``)."""
        name, doc_id = paths.database_name(db), paths.document_id(docid)
        couch, query = await self._begin(request, "deleteDocument", db=name, docid=doc_id)
        if_match_revision(request, query)
        if "rev" not in query:
            # CouchDB's answer; pouchdb-server would delete whatever revision is current.
            raise Conflict("Document update conflict: deleting needs 'rev' or 'If-Match'")
        return await self.forwarder.forward(
            request, couch, "DELETE", doc_path(name, doc_id), params=query, rev_etag="rev"
        )

    @app.route(_DB + "/bulk_docs", methods=["POST"])
    async def bulk_docs(self, request: Any, db: str) -> bytes:
        """``_bulk_docs``; the results come in the order of the documents, as CouchDB's do."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "bulkDocs", db=name)
        body = self._json_body(request, "bulkDocs")
        check_documents(body["docs"])
        for index, doc in enumerate(body["docs"]):
            # CouchDB refuses reserved and empty ids itself, one document at a time.
            doc_id = doc.get("_id") if isinstance(doc, dict) else None
            problem = paths.unaddressable_id(doc_id) if isinstance(doc_id, str) else None
            if problem is not None:
                raise InvalidRequest(f"docs[{index}]._id {problem}")
        return await self.forwarder.forward(
            request, couch, "POST", [name, "_bulk_docs"], params=query, json=body,
            amend=lambda answer: in_request_order(body, answer),
        )

    @app.route(_DB + "/bulk_get", methods=["POST"])
    async def bulk_get(self, request: Any, db: str) -> bytes:
        """``_bulk_get``."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "bulkGet", db=name)
        body = self._json_body(request, "bulkGet")
        await require_reader(request, couch, name, self._timed)
        if not body["docs"]:
            # CouchDB's answer; pouchdb-server never answers an empty list.
            return json_response(request, 200, {"results": []})
        return await self.forwarder.forward(
            request, couch, "POST", [name, "_bulk_get"], params=query, json=body,
            stream_large=True,
        )

    # -- attachments -----------------------------------------------------------

    @app.route(_DB + "/docs/<docid>/attachments/<attname>", methods=["GET", "HEAD"])
    async def get_attachment(
        self, request: Any, db: str, docid: str, attname: str
    ) -> bytes:
        """Stream an attachment down (``ETag``/``If-None-Match``, ``Range``)."""
        where = (paths.database_name(db), paths.attachment_owner(docid),
                 paths.attachment_name(attname))
        couch, query = await self._begin(
            request, "getAttachment", db=where[0], docid=where[1], attname=where[2]
        )
        return await self.attachments.download(request, couch, where, query)

    @app.route(_DB + "/docs/<docid>/attachments/<attname>", methods=["PUT"])
    async def put_attachment(
        self, request: Any, db: str, docid: str, attname: str
    ) -> bytes:
        """Stream an attachment up; its ``Content-Type`` is stored."""
        where = (paths.database_name(db), paths.attachment_owner(docid),
                 paths.attachment_name(attname))
        couch, query = await self._begin(
            request, "putAttachment", db=where[0], docid=where[1], attname=where[2]
        )
        if_match_revision(request, query)
        return await self.attachments.upload(request, couch, where, query)

    @app.route(_DB + "/docs/<docid>/attachments/<attname>", methods=["DELETE"])
    async def delete_attachment(
        self, request: Any, db: str, docid: str, attname: str
    ) -> bytes:
        """Delete an attachment (``rev`` or ``If-Match``)."""
        name, doc_id = paths.database_name(db), paths.attachment_owner(docid)
        att = paths.attachment_name(attname)
        couch, query = await self._begin(
            request, "deleteAttachment", db=name, docid=doc_id, attname=att
        )
        if_match_revision(request, query)
        return await self.forwarder.forward(
            request, couch, "DELETE", attachment_path(name, doc_id, att), params=query,
            rev_etag="rev",
        )

    # -- queries ---------------------------------------------------------------

    @app.route(_DB + "/all_docs", methods=["GET"])
    async def all_docs(self, request: Any, db: str) -> bytes:
        """``_all_docs`` with every view parameter."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "allDocs", db=name)
        return await self.forwarder.forward(
            request, couch, "GET", [name, "_all_docs"], params=query, revalidate=True,
            stream_large=True,
        )

    @app.route(_DB + "/all_docs", methods=["POST"])
    async def all_docs_keys(self, request: Any, db: str) -> bytes:
        """``_all_docs`` for a list of keys."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "allDocsKeys", db=name)
        body = self._json_body(request, "allDocsKeys")
        return await self.forwarder.forward(
            request, couch, "POST", [name, "_all_docs"], params=query, json=body,
            stream_large=True,
        )

    @app.route(_DB + "/views/<ddoc>/<view>", methods=["GET"])
    async def query_view(self, request: Any, db: str, ddoc: str, view: str) -> bytes:
        """Query a view."""
        name, design = paths.database_name(db), paths.design_name(ddoc)
        view_name = paths.design_name(view, "the view name")
        couch, query = await self._begin(
            request, "queryView", db=name, ddoc=design, view=view_name
        )
        return await self.forwarder.forward(
            request, couch, "GET", [name, "_design", design, "_view", view_name], params=query,
            revalidate=True, stream_large=True,
        )

    @app.route(_DB + "/views/<ddoc>/<view>", methods=["POST"])
    async def query_view_keys(self, request: Any, db: str, ddoc: str, view: str) -> bytes:
        """Query a view for a list of keys."""
        name, design = paths.database_name(db), paths.design_name(ddoc)
        view_name = paths.design_name(view, "the view name")
        couch, query = await self._begin(
            request, "queryViewKeys", db=name, ddoc=design, view=view_name
        )
        body = self._json_body(request, "queryViewKeys")
        return await self.forwarder.forward(
            request, couch, "POST", [name, "_design", design, "_view", view_name],
            params=query, json=body, stream_large=True,
        )

    @app.route(_DB + "/find", methods=["POST"])
    async def find(self, request: Any, db: str) -> bytes:
        """Mango ``_find``."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "find", db=name)
        body = self._json_body(request, "find")
        await require_reader(request, couch, name, self._timed)
        return await self.forwarder.forward(
            request, couch, "POST", [name, "_find"], params=query, json=body, stream_large=True
        )

    @app.route(_DB + "/indexes", methods=["GET"])
    async def list_indexes(self, request: Any, db: str) -> bytes:
        """Mango indexes."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "listIndexes", db=name)
        await require_reader(request, couch, name, self._timed)
        return await self.forwarder.forward(request, couch, "GET", [name, "_index"], params=query)

    @app.route(_DB + "/indexes", methods=["POST"])
    async def create_index(self, request: Any, db: str) -> bytes:
        """Create a Mango index (CouchDB checks design-document write rights)."""
        name = paths.database_name(db)
        couch, query = await self._begin(request, "createIndex", db=name)
        body = self._json_body(request, "createIndex")
        ddoc = body.get("ddoc")
        if isinstance(ddoc, str) and ddoc.startswith("_design/"):
            # CouchDB takes the name with or without the prefix; pouchdb-server would
            # prefix it again (_design/_design/x, which no route could delete).
            body = {**body, "ddoc": ddoc[len("_design/"):]}
        await require_db_admin(request, couch, name, self._timed)
        return await self.forwarder.forward(
            request, couch, "POST", [name, "_index"], params=query, json=body
        )

    @app.route(_DB + "/indexes/<ddoc>/<index>", methods=["DELETE"])
    async def delete_index(self, request: Any, db: str, ddoc: str, index: str) -> bytes:
        """Delete a Mango index."""
        name, design = paths.database_name(db), paths.design_name(ddoc)
        index_name = paths.design_name(index, "the index name")
        couch, query = await self._begin(
            request, "deleteIndex", db=name, ddoc=design, name=index_name
        )
        await require_db_admin(request, couch, name, self._timed)
        return await self.forwarder.forward(
            request, couch, "DELETE", [name, "_index", f"_design/{design}", "json", index_name],
            params=query,
        )

    @app.route("/<path:rest>", methods=None)
    def no_route(self, request: Any, rest: str) -> bytes:
        """Anything else: 405 on a route of the API with another method, else 404."""
        setattr(request, "route", "unmatched")  # noqa: B010
        allowed = _methods_of(bytes(request.path).decode("latin-1"))
        if allowed:
            request.setHeader("Allow", ", ".join(sorted(allowed)))
            raise MethodNotAllowedHere(f"this route takes {', '.join(sorted(allowed))}")
        special = re.search(r"/docs/(_design|_local)/", bytes(request.path).decode("latin-1"))
        if special:
            raise RouteNotFound(
                f"no such route: a document id is one path segment, so the '/' of "
                f"'{special.group(1)}/…' is written %2F (…/docs/{special.group(1)}%2Fname)")
        raise RouteNotFound("no such route")


@functools.cache
def _routes_without_catch_all() -> Any:
    """The API's routes, without the catch-all that answers for every method."""
    rules = [rule.empty() for rule in GatewayApp.app.url_map.iter_rules()
             if rule.endpoint != "no_route"]
    return wz_routing.Map(rules).bind("gateway")


def _methods_of(path: str) -> set[str]:
    """The methods the API's routes take at ``path`` (none: not a route)."""
    try:
        return set(_routes_without_catch_all().allowed_methods(path))
    except wz.HTTPException:
        return set()

