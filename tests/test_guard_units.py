"""Pure units of the security guards: login lockout, rate limit, conditional requests,
client addresses, paths, CORS and deep JSON, at their edges.

Session 22's mutation testing found these behaviours unchecked: a one-line change to
each (named in the test's comments as a mutant id) passed the whole suite. Each test
fails with its mutant applied.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.errors import Unauthorized
from gateway.http.login_guard import FailedLogins


def test_parallel_requests_with_one_password_are_not_counted_as_guesses_in_flight() -> None:
    """login_guard.py ``attempt``: "The same password sent many times at once (a page's
    parallel requests) counts once" -- with ``limit - 1`` recent failures, a page's two
    parallel requests with the right password must both reach CouchDB, not one 429."""
    clock = Clock()
    guard = FailedLogins(clock.seconds, limit=3, window=100)
    guard.failed("c", "ann")
    guard.failed("c", "ann")  # one failure short of the lockout
    answers: list[Deferred[str]] = []

    def login() -> Deferred[str]:
        answers.append(Deferred())
        return answers[-1]

    first = Deferred.fromCoroutine(guard.attempt("c", "ann", login, "right"))
    second = Deferred.fromCoroutine(guard.attempt("c", "ann", login, "right"))
    assert len(answers) == 2, second.result  # the second was not refused (RateLimited)
    for answer in answers:
        answer.callback("ok")
    assert first.result == "ok" and second.result == "ok"
    guard.check("c", "ann")  # the success cleared the failures

    # A different password in flight at the same time does count.
    guard.failed("c", "bob")
    guard.failed("c", "bob")
    pending = Deferred.fromCoroutine(guard.attempt("c", "bob", login, "guess1"))
    other = Deferred.fromCoroutine(guard.attempt("c", "bob", login, "guess2"))
    assert other.called and other.result.check(Exception)
    other.addErrback(lambda _: None)
    answers[-1].errback(Unauthorized("Name or password is incorrect."))
    pending.addErrback(lambda _: None)


def test_a_lockout_ends_exactly_when_its_retry_after_says() -> None:
    """login_guard.py ``_recent``: "the lockout ends when the oldest one of the last
    ``limit`` failures is ``window`` seconds old" -- a client that waits exactly the
    ``retry_after`` it was given is let in, not refused once more."""
    from gateway.errors import RateLimited

    clock = Clock()
    guard = FailedLogins(clock.seconds, limit=2, window=60)
    guard.failed("c", "ann")
    clock.advance(5)
    guard.failed("c", "ann")
    try:
        guard.check("c", "ann")
    except RateLimited as refused:
        wait = refused.retry_after
    else:
        raise AssertionError("two failures with limit=2 must lock the pair out")
    assert wait == 55
    clock.advance(wait)
    guard.check("c", "ann")  # the first failure is now 60 s old: out of the window


def test_failures_answered_after_a_lockout_do_not_shorten_it() -> None:
    """login_guard.py ``failed``: only the last ``limit`` failures are kept. Failures
    answered after the pair was locked out (the same wrong password sent many times at
    once counts once in flight) must not leave an older failure at the head of the
    lockout, which ``_room_to_lock`` would take for its end and forget it early."""
    from gateway.errors import RateLimited

    clock = Clock()
    guard = FailedLogins(clock.seconds, limit=2, window=100)
    guard.failed("c", "ann")          # t=0
    clock.advance(50)
    guard.failed("c", "ann")          # t=50: locked out until t=150
    clock.advance(10)
    guard.failed("c", "ann")          # t=60: an attempt in flight answered late
    clock.advance(41)                 # t=101: the t=0 failure is out of the window
    guard.failed("c2", "bob")
    guard.failed("c2", "bob")         # another lockout: makes _room_to_lock look
    try:
        guard.check("c", "ann")
    except RateLimited:
        pass
    else:
        raise AssertionError("ann's last two failures (t=50, t=60) are within the window")


def test_rate_limit_buckets_hold_at_most_burst_tokens_and_refill_from_the_last_take() -> None:
    """ratelimit.py ``RateLimiter.check``: a client idle for an hour gets ``burst``
    requests at once, not ``rate * 3600``; a token taken at t=1 is not refilled by the
    time before it; at most ``max_clients`` buckets are kept."""
    import pytest

    from gateway.errors import RateLimited
    from gateway.http.ratelimit import RateLimiter

    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock.seconds, max_clients=3)
    limiter.check("a")
    clock.advance(3600)  # idle: the bucket is full, with 2 tokens and no more
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")

    steady = RateLimiter(rate=1.0, burst=1, clock=clock.seconds)
    steady.check("b")
    clock.advance(1.0)
    steady.check("b")  # the token refilled in that second
    clock.advance(0.1)
    with pytest.raises(RateLimited) as refused:
        steady.check("b")  # 0.1 s since the last take: 0.1 token
    assert refused.value.retry_after == pytest.approx(0.9)

    for client in ("c1", "c2", "c3", "c4", "c5"):
        limiter.check(client)
    assert len(limiter._buckets) == 3


def test_names_are_refused_with_the_documented_error() -> None:
    """paths.py: a name reaching a system database is 403 (AccessDenied), with or without
    a leading '/'; a database name past CouchDB's 238 characters and an attachment name
    starting with '_' are refused before CouchDB is asked."""
    import pytest

    from gateway.errors import AccessDenied, InvalidRequest
    from gateway.http import paths

    for raw in ("_users", "_replicator", "%5Fusers", "%2F_users", "%2F%2F_config"):
        with pytest.raises(AccessDenied):
            paths.database_name(raw)
    assert paths.database_name("a" * 238) == "a" * 238
    with pytest.raises(InvalidRequest):
        paths.database_name("a" * 239)
    for raw in ("_x", "%5Fx", "_design", "_attachments"):
        with pytest.raises(InvalidRequest):
            paths.attachment_name(raw)
    assert paths.attachment_name("a%2F_b") == "a/_b"


def test_rate_limit_forgets_the_least_recently_used_bucket_first() -> None:
    """ratelimit.py: "least recently used ones are dropped" -- a client that keeps
    using its bucket keeps it (its spent tokens) while an idle one is forgotten."""
    import pytest

    from gateway.errors import RateLimited
    from gateway.http.ratelimit import RateLimiter

    clock = Clock()
    limiter = RateLimiter(rate=0.001, burst=2, clock=clock.seconds, max_clients=2)
    limiter.check("busy")
    limiter.check("idle")
    limiter.check("busy")  # busy has spent its burst, and was used last
    limiter.check("new")   # one bucket too many: idle goes, not busy
    with pytest.raises(RateLimited):
        limiter.check("busy")


def test_if_range_takes_only_the_current_strong_tag_and_revision_tags_are_whole() -> None:
    """conditional.py ``range_applies``: RFC 9110 13.1.5 -- If-Range uses the strong
    comparison, so a weak tag (the gateway's W/ tags of gzip-coded answers) never lets
    a Range apply; ``is_revision_tag`` takes a whole tag, not a prefix of one."""
    from gateway.http import conditional

    assert conditional.range_applies(None, 'W/"x"')
    assert conditional.range_applies(' "x" ', '"x"')
    assert not conditional.range_applies('"y"', '"x"')
    assert not conditional.range_applies('W/"x"', 'W/"x"')  # weak: never
    assert not conditional.range_applies('W/"x"', '"x"')
    assert not conditional.range_applies('"x"', 'W/"x"')
    assert conditional.is_revision_tag('"12-abc"')
    for tag in ('"12-abc"x', '"12-abc", "1-d"', 'W/"12-abc"', '"abc"'):
        assert not conditional.is_revision_tag(tag), tag


def test_design_and_view_names_are_one_segment() -> None:
    """paths.py ``design_name``: a '/' (sent as %2F) is refused, as '.' and '..' are."""
    import pytest

    from gateway.errors import InvalidRequest
    from gateway.http import paths

    assert paths.design_name("by%20n") == "by n"
    for raw in ("a%2Fb", "%2F", ".", "..", "%2E%2E", ""):
        with pytest.raises(InvalidRequest):
            paths.design_name(raw)


def test_body_ids_are_taken_literally_and_refused_when_no_path_could_reach_them() -> None:
    """paths.py ``body_document_id``: an ``_id`` in a body is not percent-decoded (a
    literal ``%5Fx`` or ``%C0`` is an ordinary id); an empty one, or one with a control
    character (DEL included), is refused: no path of the API could reach it again."""
    import pytest

    from gateway.errors import InvalidRequest
    from gateway.http import paths

    for literal in ("%5Fx", "%C0", "a%2F..", "100%", "...", ".a"):
        assert paths.body_document_id(literal) == literal
    for bad in ("", ".", "..", "a\nb", "a\x00", "a\x7fb", "_x", "_design/a/../b"):
        with pytest.raises(InvalidRequest):
            paths.body_document_id(bad)
    with pytest.raises(InvalidRequest):
        paths.document_id("a%7Fb")


def test_cors_preflight_and_exposed_headers_cover_the_whole_api() -> None:
    """cors.py: every method of the API is allowed cross-origin (DELETE included), the
    preflight may be cached ``max_age`` s, and a page may read ``Retry-After`` (429/503)."""
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.http.cors import Cors

    cors = Cors(["https://app.example"], max_age=600)
    preflight = DummyRequest([b""])
    preflight.method = b"OPTIONS"
    preflight.requestHeaders.addRawHeader(b"origin", b"https://app.example")
    preflight.requestHeaders.addRawHeader(b"access-control-request-method", b"DELETE")
    assert cors.apply(preflight) is True and preflight.responseCode == 204
    methods = {m.strip() for m in preflight.responseHeaders.getRawHeaders(
        b"access-control-allow-methods")[0].decode().split(",")}
    assert methods >= {"GET", "HEAD", "POST", "PUT", "DELETE"}
    assert preflight.responseHeaders.getRawHeaders(b"access-control-max-age") == [b"600"]

    simple = DummyRequest([b""])
    simple.method = b"GET"
    simple.requestHeaders.addRawHeader(b"origin", b"https://app.example")
    simple.requestHeaders.addRawHeader(b"access-control-request-method", b"GET")
    assert cors.apply(simple) is False  # a GET is never a preflight
    exposed = {h.strip() for h in simple.responseHeaders.getRawHeaders(
        b"access-control-expose-headers")[0].decode().split(",")}
    assert exposed >= {"ETag", "Retry-After", "Location", "Content-Range", "X-Request-Id"}


def test_content_etags_differ_for_different_bytes() -> None:
    """conditional.py ``content_etag``: any changed byte gives another tag (a 304 for a
    changed view answer would keep the browser on stale data)."""
    from gateway.http.conditional import content_etag

    assert content_etag(b'{"rows":[1]}') != content_etag(b'{"rows":[1]]')
    assert content_etag(b"a") != content_etag(b"b")
    assert content_etag(b"") == content_etag(b"")


def test_deep_json_writes_exactly_to_its_limit_and_counts_objects_as_levels() -> None:
    """deep_json.py: ``dumps`` writes MAX_DEPTH levels and refuses one more, objects as
    arrays; ``loads`` counts a closed object as closed (many sibling objects next to a
    deep value are not depth)."""
    import pytest

    from gateway import deep_json

    def nested(depth: int, open_: str, close: str) -> str:
        return open_ * depth + close * depth

    for open_, close, make in (("[", "]", lambda v: [v]), ('{"k":', "}", lambda v: {"k": v})):
        value: object = 0
        for _ in range(deep_json.MAX_DEPTH):
            value = make(value)
        assert deep_json.dumps(value, separators=(",", ":")) == (
            open_ * deep_json.MAX_DEPTH + "0" + close * deep_json.MAX_DEPTH)
        with pytest.raises(deep_json.NestedTooDeep):
            deep_json.dumps(make(value))
    wide = '{"deep":' + nested(3000, "[", "]") + ',"many":[' + ",".join(["{}"] * 12_000) + "]}"
    assert len(deep_json.loads(wide)["many"]) == 12_000


def test_the_query_string_is_not_checked_as_path_segments() -> None:
    """paths.py ``check_raw_path``: only the path is checked for '//', '.' and '..'
    segments; a query string may hold them (a view key "a//b", a "../x" value)."""
    import pytest

    from gateway.errors import InvalidRequest
    from gateway.http.paths import check_raw_path

    check_raw_path(b'/api/v1/db/x/all_docs?start_key=%22a//b%22&end_key=%22../x/%22')
    check_raw_path(b"/api/v1/db/x/docs/d?rev=1-a/")
    for bad in (b"/api/v1/db/x//all_docs?a=b", b"/api/v1/db/%2e%2e/all_docs?a=b"):
        with pytest.raises(InvalidRequest):
            check_raw_path(bad)


def test_client_address_edge_cases_of_trusted_ranges() -> None:
    """client_address.py: a client whose own address is inside the trusted ranges (an
    internal client behind the balancer) is itself, not the balancer; a range written
    with host bits (10.0.0.1/8) is taken as its network; ``::ffff:0:0/96`` trusts the
    IPv4 peers a dual-stack socket shows plainly."""
    from twisted.internet.address import IPv4Address
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.http.client_address import ClientAddress

    def request(peer: str, forwarded: str | None) -> DummyRequest:
        made = DummyRequest([b""])
        made.client = IPv4Address("TCP", peer, 1234)
        if forwarded is not None:
            made.requestHeaders.addRawHeader(b"x-forwarded-for", forwarded.encode())
        return made

    trusted = ClientAddress(["10.0.0.0/8"])
    assert trusted.of(request("10.0.0.2", "10.0.0.5")) == "10.0.0.5"
    assert trusted.of(request("10.0.0.2", "10.0.0.5, 10.0.0.3")) == "10.0.0.5"
    assert ClientAddress(["10.0.0.1/8"]).of(request("10.9.9.9", "198.51.100.7")) == "198.51.100.7"
    mapped = ClientAddress(["::ffff:0:0/96"])
    assert mapped.of(request("10.0.0.2", "198.51.100.7")) == "198.51.100.7"
