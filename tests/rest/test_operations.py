"""Operations routes, the contract endpoints, request ids and unknown routes."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from tests.rest.conftest import Reply, RunningGateway, StartGateway


async def test_health_ready_and_request_id(gateway: RunningGateway) -> None:
    reply = await gateway.client.get("/health")
    assert reply.status == 200 and reply.json == {"ok": True}
    ready = await gateway.client.get("/ready")
    assert ready.status == 200
    echoed = await gateway.client.get("/health", headers={"X-Request-Id": "abc-123"})
    assert echoed.header("X-Request-Id") == "abc-123"
    bogus = await gateway.client.get("/health", headers={"X-Request-Id": "bad id\twith space"})
    assert bogus.header("X-Request-Id") not in (None, "bad id\twith space")


async def test_ready_names_refused_service_credentials_and_logs_it_once(
    start_gateway: StartGateway,
) -> None:
    """CouchDB answers, but not to the gateway's own identity: the load balancer takes the
    gateway out either way, and the operator must learn which setting to fix (it said
    "CouchDB is not ready", 503, and logged nothing)."""
    from twisted.logger import globalLogPublisher

    gateway = await start_gateway(couchdb_password="definitely-wrong")
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        replies = [await gateway.client.get("/ready") for _ in range(3)]
    finally:
        globalLogPublisher.removeObserver(events.append)
    for reply in replies:
        assert reply.status == 502 and reply.json["error"] == "service_refused", reply.json
        assert "COUCHDB_USER" in reply.json["reason"]
        assert "definitely-wrong" not in reply.body.decode()
    warnings = [e for e in events if e.get("log_namespace") == "gateway.http"
                and "not ready" in e.get("log_format", "")]
    assert len(warnings) == 1 and "service_refused" in warnings[0]["verdict"]


class _ScriptedCouch(Resource):
    """A CouchDB node whose ``/_up`` answers ``up_status``: 200 ok, 404 maintenance mode
    (CouchDB 3's drained node), 403 the service identity forbidden, else an error."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self) -> None:
        super().__init__()
        self.up_status = 404
        self.root_hits = 0

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if request.path == b"/_up":
            request.setResponseCode(self.up_status)
            return {200: b'{"status":"ok"}', 404: b'{"status":"maintenance_mode"}',
                    403: b'{"error":"forbidden","reason":"You are not a server admin."}',
                    }.get(self.up_status, b'{"error":"unknown","reason":"boom"}')
        self.root_hits += 1
        return b'{"couchdb":"Welcome","version":"3.5.0"}'


async def _ready_replies(start_gateway: StartGateway, reactor: Any, statuses: list[int]
                         ) -> tuple[list[Reply], list[dict[str, Any]]]:
    """``/ready`` once per ``/_up`` status of a scripted CouchDB, and the verdicts logged."""
    from twisted.logger import globalLogPublisher
    from twisted.web.server import Site

    couch = _ScriptedCouch()
    listening = reactor.listenTCP(0, Site(couch), interface="127.0.0.1")
    events: list[dict[str, Any]] = []
    replies = []
    try:
        gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{listening.getHost().port}")
        globalLogPublisher.addObserver(events.append)
        try:
            for status in statuses:
                couch.up_status = status
                replies.append(await gateway.client.get("/ready"))
        finally:
            globalLogPublisher.removeObserver(events.append)
    finally:
        await listening.stopListening()
    verdicts = [e for e in events if e.get("log_namespace") == "gateway.http"
                and ("not ready" in e.get("log_format", "") or "ready:" in e.get("log_format", ""))]
    return replies, verdicts


async def test_ready_fails_while_couchdb_is_in_maintenance_mode(
    start_gateway: StartGateway, reactor: Any,
) -> None:
    """A node in maintenance mode still answers ``GET /`` 200; ``/_up`` is what says it
    is drained (CouchDB 3: 404 ``{"status": "maintenance_mode"}``)."""
    from twisted.web.server import Site

    couch = _ScriptedCouch()
    listening = reactor.listenTCP(0, Site(couch), interface="127.0.0.1")
    try:
        gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{listening.getHost().port}")
        drained = await gateway.client.get("/ready")
        assert drained.status == 503 and drained.json["error"] == "upstream_unavailable"
        assert "maintenance_mode" in drained.json["reason"]
        assert drained.header("Retry-After")
        couch.up_status = 200
        assert (await gateway.client.get("/ready")).status == 200
        assert couch.root_hits == 0  # a server with /_up is not asked anything else
    finally:
        await listening.stopListening()


async def test_a_403_to_the_service_identity_names_the_credentials(
    start_gateway: StartGateway, reactor: Any,
) -> None:
    """CouchDB (or a proxy before it) forbids the gateway's identity: that is the service
    credentials' problem (502 service_refused), not "CouchDB is not ready"."""
    replies, _ = await _ready_replies(start_gateway, reactor, [403])
    assert replies[0].status == 502, replies[0].json
    assert replies[0].json["error"] == "service_refused"
    assert "COUCHDB_USER" in replies[0].json["reason"]


async def test_an_outage_a_recovery_and_the_same_outage_again_are_each_logged_once(
    start_gateway: StartGateway, reactor: Any,
) -> None:
    """Each change of verdict is logged once: down, up again, and down again (the
    second outage must not be hidden because it looks like the first one)."""
    replies, verdicts = await _ready_replies(start_gateway, reactor,
                                             [500, 500, 200, 200, 500, 500])
    assert [r.status for r in replies] == [503, 503, 200, 200, 503, 503]
    kinds = ["down" if "not ready" in e["log_format"] else "up" for e in verdicts]
    assert kinds == ["down", "up", "down"], [e["log_format"] for e in verdicts]


async def test_metrics_count_requests_by_route_and_status(gateway: RunningGateway) -> None:
    await gateway.client.get("/health")
    await gateway.client.get("/api/v1/db/nosuchdb")  # 401: anonymous
    reply = await gateway.client.get("/metrics")
    assert reply.status == 200
    assert reply.header("Content-Type").startswith("text/plain")
    text = reply.body.decode()
    assert 'wallaby_http_requests_total{route="getHealth",method="GET",status="200"}' in text
    assert 'route="getDatabase",method="GET",status="401"' in text
    assert "wallaby_http_request_duration_seconds_bucket" in text
    assert 'wallaby_errors_total{route="getDatabase",error="unauthorized"} 1' in text
    assert "wallaby_upstream_duration_seconds" in text


async def test_openapi_and_docs_page(gateway: RunningGateway) -> None:
    spec = await gateway.client.get("/openapi.json")
    assert spec.status == 200 and spec.json["openapi"].startswith("3.1")
    assert "/api/v1/db/{db}/docs/{docid}" in spec.json["paths"]
    docs = await gateway.client.get("/docs")
    assert docs.status == 200 and b"/openapi.json" in docs.body
    assert b"<script src=" not in docs.body  # self-contained, no CDN
    cookie = spec.json["components"]["securitySchemes"]["cookieAuth"]
    assert cookie == {"type": "apiKey", "in": "cookie", "name": gateway.settings.cookie_name}


async def test_openapi_names_the_session_cookie_this_gateway_sets(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(cookie_name="app_session")
    spec = await gateway.client.get("/openapi.json")
    assert spec.json["components"]["securitySchemes"]["cookieAuth"]["name"] == "app_session"


async def test_unknown_routes_and_methods_get_the_envelope(gateway: RunningGateway) -> None:
    for path in ("/nope", "/api/v1/nope", "/api/v2/db/x"):
        reply = await gateway.client.get(path)
        assert reply.status == 404 and reply.json["error"] == "not_found"
    # A route of the API with a method it does not take: 405 naming the ones it does
    # (CouchDB's answer), not a 404 that says the URL is wrong.
    for method, path, allowed in (
        ("PATCH", "/api/v1/db/x", "DELETE, GET, HEAD, PUT"),
        ("POST", "/api/v1/db/x/docs/a", "DELETE, GET, HEAD, PUT"),
        ("DELETE", "/api/v1/db/x/all_docs", "GET, HEAD, POST"),
        ("GET", "/api/v1/db/x/find", "POST"),
        ("POST", "/health", "GET, HEAD"),
        ("TRACE", "/api/v1/db/x", "DELETE, GET, HEAD, PUT"),
        ("PROPFIND", "/api/v1/db/x/docs/a", "DELETE, GET, HEAD, PUT"),
    ):
        reply = await gateway.client.request(method, path)
        assert reply.status == 405, (method, path, reply.body)
        assert reply.json["error"] == "method_not_allowed" and reply.json["status"] == 405
        assert reply.header("Allow") == allowed, (method, path)
    for method in ("TRACE", "PROPFIND"):  # any method, on a path that is no route: 404
        reply = await gateway.client.request(method, "/nope")
        assert reply.status == 404 and reply.json["error"] == "not_found", method
    # Mistakes a newcomer makes are named.
    design = await gateway.client.get("/api/v1/db/x/docs/_design/app")
    assert design.status == 404 and "_design%2Fname" in design.json["reason"], design.json
    trailing = await gateway.client.get("/api/v1/db/x/")
    assert trailing.status == 400 and "must not end with '/'" in trailing.json["reason"]
    doubled = await gateway.client.get("/api/v1//db/x")
    assert doubled.status == 400 and "('//')" in doubled.json["reason"]


async def test_every_route_refuses_unknown_query_parameters(gateway: RunningGateway) -> None:
    for method, path in (("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"),
                         ("GET", "/openapi.json"), ("GET", "/docs"),
                         ("DELETE", "/api/v1/session")):
        reply = await gateway.client.request(method, f"{path}?x=1")
        assert reply.status == 400 and "unknown query parameter 'x'" in reply.json["reason"], path
    # Names and values are percent-decoded as UTF-8, or refused as not UTF-8.
    named = await gateway.client.get("/health?%C3%A9t%C3%A9=%C3%A0")
    assert named.status == 400 and "unknown query parameter 'été'" in named.json["reason"]
    broken = await gateway.client.get("/health?x=%FF")
    assert broken.status == 400 and "not valid UTF-8" in broken.json["reason"]


async def test_demo_page_and_static_files(gateway: RunningGateway) -> None:
    import treq

    from gateway.http.app import STATIC_DIR

    response = await gateway.client.open("GET", "/")
    body = await treq.content(response)
    if not (STATIC_DIR / "index.html").is_file():
        assert response.code == 404 and b"not_found" in body
        return
    assert response.code == 200 and body == (STATIC_DIR / "index.html").read_bytes()
    assert response.headers.getRawHeaders("Content-Type")[0].startswith("text/html")
    for asset in sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file())[:2]:
        static = await gateway.client.open("GET", f"/static/{asset}")
        assert static.code == 200
        assert await treq.content(static) == (STATIC_DIR / asset).read_bytes()
    missing = await gateway.client.get("/static/nope.js")
    assert missing.status == 404


async def _fetch(gateway: RunningGateway, path: str) -> tuple[int, Any, bytes]:
    """Status, headers and body of a GET whatever its content type."""
    import treq

    response = await gateway.client.open("GET", path)
    body = await treq.content(response)
    return response.code, response.headers, body


async def test_static_directory_is_not_listed(gateway: RunningGateway) -> None:
    """``/static/`` lists nothing: the front door refuses the trailing '/' (400) before
    StaticFiles.directoryListing is reached; every answer is the JSON envelope."""
    for path in ("/static/", "/static", "/static/./", "/static/?x"):
        code, headers, body = await _fetch(gateway, path)
        assert code in (400, 404), (path, code, body[:200])
        assert b"wallaby.js" not in body, body[:300]
        assert headers.getRawHeaders("Content-Type") == ["application/json"], path


async def test_static_files_do_not_escape_their_directory(gateway: RunningGateway) -> None:
    """Path traversal, raw or percent-encoded, reaches nothing outside gateway/static."""
    from gateway.http.app import STATIC_DIR

    secret = (STATIC_DIR.parent / "http" / "static_files.py").read_bytes()
    for path in ("/static/../http/static_files.py", "/static/%2e%2e/http/static_files.py",
                 "/static/..%2fhttp%2fstatic_files.py", "/static/%2e%2e%2fhttp/static_files.py",
                 "/static/..%5chttp%5cstatic_files.py"):
        code, _headers, body = await _fetch(gateway, path)
        assert code in (400, 404), (path, code)
        assert secret not in body and b"PAGE_HEADERS" not in body, path


async def test_static_content_types(gateway: RunningGateway) -> None:
    from gateway.http.app import STATIC_DIR

    for name, expected in (("wallaby.js", ("text/javascript", "application/javascript")),
                           ("demo.css", ("text/css",)), ("index.html", ("text/html",))):
        if not (STATIC_DIR / name).is_file():
            continue
        code, headers, _body = await _fetch(gateway, f"/static/{name}")
        assert code == 200, name
        ctype = headers.getRawHeaders("Content-Type")[0]
        assert ctype.split(";")[0].strip() in expected, (name, ctype)


def test_an_unreadable_static_file_is_a_404_envelope_not_twisted_html(monkeypatch: Any) -> None:
    """The tests run as root, so EACCES cannot come from file modes: the file's opening
    fails with EACCES instead (Twisted's File then renders its ``forbidden`` resource)."""
    import errno
    import json

    from twisted.web.test.requesthelper import DummyRequest

    from gateway.http.app import STATIC_DIR
    from gateway.http.static_files import StaticFiles

    def refuse(self: Any) -> Any:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(StaticFiles, "openForReading", refuse)
    child = StaticFiles(str(STATIC_DIR)).getChild(b"wallaby.js", DummyRequest([b""]))
    request = DummyRequest([b""])
    body = child.render(request)
    assert request.responseCode == 404
    assert json.loads(body)["error"] == "not_found", body[:200]
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]


async def test_demo_page_static_files_and_docs_refuse_other_origins_frames(
    gateway: RunningGateway,
) -> None:
    """A signed-in page framed by another site (or another port of the same host, which
    gets the session cookie) is clickjacking bait: only this origin frames the demo page
    and its files, nobody frames /docs. The files are revalidated before each use, so an
    upgrade never pairs a cached wallaby.js with a new page."""
    import treq

    from gateway.http.app import STATIC_DIR

    paths = ["/static/wallaby.js"]
    if (STATIC_DIR / "index.html").is_file():
        paths.append("/")
    for path in paths:
        response = await gateway.client.open("GET", path)
        await treq.content(response)
        assert response.code == 200, path

        def header(name: str, response: Any = response) -> str:
            return str(response.headers.getRawHeaders(name, [""])[0])

        assert header("Content-Security-Policy") == (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'"), path
        assert header("X-Frame-Options") == "SAMEORIGIN", path
        assert header("Referrer-Policy") == "same-origin", path
        assert header("Cache-Control") == "no-cache", path
        again = await gateway.client.open(
            "GET", path, headers={"If-Modified-Since": header("Last-Modified")})
        await treq.content(again)
        assert again.code == 304, path
    # /docs is an HTML page (else a browser shows its source), loads nothing but its own
    # origin and inline code, and names itself to no other origin.
    docs = await gateway.client.get("/docs")
    assert str(docs.header("Content-Type")).startswith("text/html"), docs.header("Content-Type")
    assert docs.header("Content-Security-Policy") == (
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "frame-ancestors 'none'")
    assert docs.header("Referrer-Policy") == "same-origin"
    assert docs.header("X-Frame-Options") == "DENY"


async def test_mounted_resources_pass_the_front_door(start_gateway: StartGateway) -> None:
    from twisted.web.resource import Resource

    class Hello(Resource):
        isLeaf = True  # noqa: N815 - Twisted's name

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"Content-Type", b"text/plain")
            return b"mounted"

    gateway = await start_gateway(cors_origins=("https://app.example",))
    gateway.app.mount(b"/api/v1/changes", Hello())
    response = await gateway.client.open(
        "GET", "/api/v1/changes", headers={"Origin": "https://app.example"}
    )
    import treq

    assert response.code == 200 and await treq.content(response) == b"mounted"
    assert response.headers.getRawHeaders("X-Request-Id")
    assert response.headers.getRawHeaders("Access-Control-Allow-Origin") == ["https://app.example"]
    assert gateway.app.in_flight.count == 0
    traversal = await gateway.client.get("/api/v1/changes/../db/_users")
    assert traversal.status == 400


async def test_made_up_methods_do_not_grow_the_metrics(gateway: RunningGateway) -> None:
    """Every client-chosen method token used to become its own metrics series (memory
    without bound, unauthenticated and not rate limited on /health)."""
    tokens = [f"X{i:03d}" + "Y" * 200 for i in range(40)]
    for token in tokens:
        reply = await gateway.client.request(token, "/health")
        assert reply.status == 405
    text = (await gateway.client.get("/metrics")).body.decode()
    assert not any(token in text for token in tokens)
    assert 'method="OTHER",status="405"} 40' in text


async def test_a_body_nested_too_deep_is_a_clean_400(scenario: Any) -> None:
    db = scenario.db.name
    deep = b"[" * 100_000 + b"]" * 100_000
    for _ in range(2):  # the second time too: no HTML error page after the first
        reply = await scenario.member_client.request(
            "POST", f"/api/v1/db/{db}/docs", data=deep,
            headers={"Content-Type": "application/json"})
        assert reply.status == 400, reply.body[:200]
        assert reply.json["error"] == "bad_request"
        assert "nested deeper than 10000 levels" in reply.json["reason"]


async def test_metrics_do_not_grow_a_series_per_made_up_method(gateway: RunningGateway) -> None:
    """HTTP methods are client-chosen tokens: each made-up one (``QRX1``, ``QRX2`` …) must
    not become a new ``method`` label value — that is unbounded memory in the gateway and
    a cardinality explosion in Prometheus for anyone who can reach the port."""
    for i in range(40):
        reply = await gateway.client.request(f"QRX{i}", "/health")
        assert reply.status in (405, 501), reply.status
    text = (await gateway.client.get("/metrics")).body.decode()
    methods = {line.split('method="', 1)[1].split('"', 1)[0] for line in text.splitlines()
               if line.startswith("wallaby_http_requests_total{")}
    assert not any(m.startswith("QRX") for m in methods), sorted(methods)
    assert "OTHER" in methods, sorted(methods)
