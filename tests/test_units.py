"""Fast unit tests of the pure parts: URL building, errors, auth headers, settings."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.config import Settings
from gateway.couch import Database
from gateway.couch.auth import ProxyAuth, SessionAuth, session_cookie_from_headers
from gateway.couch.urls import (
    attachment_path,
    doc_path,
    encode_query,
    join_url,
    path_bytes,
    split_credentials,
)
from gateway.couch.views import split_view_params, view_path
from gateway.errors import (
    Conflict,
    CouchError,
    CouchTimeout,
    CouchUnreachable,
    NotFound,
    RateLimited,
    UpstreamServerError,
    error_body,
)
from gateway.monotonic import use_monotonic_clock


def test_doc_ids_are_one_encoded_segment() -> None:
    url = join_url("http://h:1", doc_path("db", "a/b?c#d%e f+g"))
    assert url == "http://h:1/db/a%2Fb%3Fc%23d%25e%20f%2Bg"


@given(st.lists(st.text(), max_size=4), st.sampled_from(["", "rev=1-a&x=%22y%22"]))
def test_path_bytes_matches_join_url(segments: list[str], query: str) -> None:
    assert b"http://h" + path_bytes(segments, query) == join_url(
        "http://h", segments, query
    ).encode("ascii")


def test_widen_and_narrow_change_one_transport_only() -> None:
    from twisted.internet.tcp import Connection

    from gateway.http.streaming import CHUNK, narrow, widen

    class Proxy:  # like twisted.web._newclient.TransportProxyProducer
        def __init__(self, producer: object) -> None:
            self._producer = producer

    raw = object.__new__(Connection)
    assert widen(Proxy(raw)) is raw and raw.bufferSize == raw.SEND_LIMIT == CHUNK
    assert Connection.bufferSize != CHUNK
    narrow(raw)
    assert raw.bufferSize == Connection.bufferSize and raw.SEND_LIMIT == Connection.SEND_LIMIT
    assert widen(None) is None and widen(object()) is None


def test_design_and_local_ids_keep_their_prefix() -> None:
    assert join_url("http://h", doc_path("db", "_design/x/y")) == "http://h/db/_design/x%2Fy"
    assert join_url("http://h", doc_path("db", "_local/cp")) == "http://h/db/_local/cp"
    assert doc_path("db", "_design/") == ["db", "_design/"]


def test_attachment_names_keep_slashes_as_separators() -> None:
    url = join_url("http://h", attachment_path("db", "d", "img/a b.png"))
    assert url == "http://h/db/d/img/a%20b.png"


@given(st.one_of(st.text(min_size=1), st.sampled_from(
    [".", "..", "_design/..", "_local/.", "_design/", "_local/"])))
def test_any_doc_id_never_escapes_its_segment(doc_id: str) -> None:
    """Each id is one segment (two for ``_design/x`` and ``_local/x``), never a dot
    segment: an id that would be one is refused before any URL is made."""
    rest = doc_id.split("/", 1)[1] if doc_id.startswith(("_design/", "_local/")) else ""
    if doc_id in (".", "..") or rest in (".", ".."):
        with pytest.raises(ValueError, match="cannot be named in a URL"):
            doc_path("db", doc_id)
        return
    url = join_url("http://h", doc_path("db", doc_id))
    path = url[len("http://h/db/"):]
    assert path.split("/")[-1] not in (".", "..", "")
    if doc_id.startswith(("_design/", "_local/")) and len(doc_id.split("/", 1)[1]) > 0:
        prefix, rest = path.split("/", 1)
        assert "/" not in rest and prefix in ("_design", "_local")
    else:
        assert "/" not in path and "?" not in path and "#" not in path


def test_query_encoding_json_for_keys_and_booleans() -> None:
    query = encode_query({"key": ["a", 1], "startkey": "x", "include_docs": True,
                          "limit": 5, "skip": None})
    assert query == "key=%5B%22a%22%2C1%5D&startkey=%22x%22&include_docs=true&limit=5"


def test_split_credentials() -> None:
    assert split_credentials("http://ad%40m:p%3Aw@127.0.0.1:5984/") == (
        "http://127.0.0.1:5984", "ad@m", "p:w")
    assert split_credentials("http://127.0.0.1:5984") == ("http://127.0.0.1:5984", None, None)


def test_view_params_and_paths() -> None:
    assert split_view_params({"count": 3, "keys": [1]}) == ({"limit": 3}, {"keys": [1]})
    assert view_path("db", "_design/d/_view/v") == ["db", "_design", "d", "_view", "v"]
    assert view_path("db", "d/v") == ["db", "_design", "d", "_view", "v"]
    with pytest.raises(ValueError):
        view_path("db", "_design/d/_list/v")


def test_errors_from_couch_answers() -> None:
    error = CouchError.from_response(404, {"error": "not_found", "reason": "missing"})
    assert isinstance(error, NotFound) and error.status == 404 and error.reason == "missing"
    assert isinstance(CouchError.from_response(409, {"error": "conflict"}), Conflict)
    assert isinstance(CouchError.from_response(503, "garbage"), UpstreamServerError)
    odd = CouchError.from_response(418, None)
    assert type(odd) is CouchError and odd.status == 418


def test_error_envelope_mapping() -> None:
    status, body, headers = error_body(NotFound("missing"))
    assert (status, body, headers) == (404, {"error": "not_found", "reason": "missing",
                                             "status": 404}, {})
    status, body, headers = error_body(CouchUnreachable("down"))
    assert status == 503 and headers["Retry-After"] == "5"
    assert error_body(CouchTimeout("slow"))[0] == 504
    assert error_body(UpstreamServerError("boom", status=500))[0] == 502
    # A 5xx keeps the server's code in the reason: a 502 never says "bad_request".
    crashed = CouchError.from_response(500, {"error": "bad_request", "reason": "no such index"})
    assert error_body(crashed)[:2] == (502, {"error": "upstream_error",
                                             "reason": "bad_request: no such index",
                                             "status": 502})
    status, body, _ = error_body(KeyError("secret-detail"))
    assert status == 500 and "secret-detail" not in str(body)
    assert error_body(RateLimited(retry_after=2.2))[2] == {"Retry-After": "3"}


async def test_proxy_auth_headers_follow_couchdb() -> None:
    auth = ProxyAuth("alice", ["a", "b"], secret="s3cret")
    headers = await auth.headers()
    expected = hmac.new(b"s3cret", b"alice", hashlib.sha256).hexdigest()
    assert headers == {"X-Auth-CouchDB-UserName": "alice", "X-Auth-CouchDB-Roles": "a,b",
                       "X-Auth-CouchDB-Token": expected}
    assert "s3cret" not in repr(auth)


@pytest.mark.parametrize(("setting", "digest"), [
    ("sha256", hashlib.sha256),  # CouchDB 3.3.2 and later ([chttpd_auth] hash_algorithms)
    ("sha1", hashlib.sha1),      # CouchDB 3.0 to 3.3.1: HMAC-SHA1 only
])
async def test_proxy_token_is_signed_with_the_configured_hash(setting: str, digest: Any) -> None:
    settings = Settings.from_env({"WALLABY_AUTH_MODE": "proxy", "WALLABY_PROXY_SECRET": "s3cret",
                                  "WALLABY_PROXY_HASH": setting.upper()})
    assert settings.proxy_hash == setting
    auth = ProxyAuth("alice", ["a"], secret="s3cret", digest=settings.proxy_hash)
    token = (await auth.headers())["X-Auth-CouchDB-Token"]
    assert token == hmac.new(b"s3cret", b"alice", digest).hexdigest()
    assert len(token) == 2 * digest().digest_size
    assert Settings().proxy_hash == "sha256"
    with pytest.raises(ValueError, match=r"^WALLABY_PROXY_HASH: 'md5' is not one of"):
        Settings.from_env({"WALLABY_PROXY_HASH": "md5"})


async def test_session_auth_adopts_refreshed_cookie() -> None:
    logins: list[str] = []

    async def login(name: str, password: str) -> str:
        logins.append(name)
        return "first"

    auth = SessionAuth("bob", "pw", login)
    assert await auth.headers() == {"Cookie": "AuthSession=first"}
    auth.observe(["AuthSession=second; Version=1; Path=/; HttpOnly"])
    assert await auth.headers() == {"Cookie": "AuthSession=second"}
    assert await auth.renew() is True
    assert await auth.headers() == {"Cookie": "AuthSession=first"}
    assert logins == ["bob", "bob"]
    assert "pw" not in repr(auth)
    assert session_cookie_from_headers(["other=1", "AuthSession=x; Path=/"]) == "x"


async def test_session_auth_shares_one_login_among_requests_that_need_it() -> None:
    pending: list[Deferred[str]] = []

    def login(name: str, password: str) -> Deferred[str]:
        pending.append(Deferred())
        return pending[-1]

    auth = SessionAuth("bob", "pw", login)
    waiting = [Deferred.fromCoroutine(auth.headers()) for _ in range(3)]
    assert len(pending) == 1 and not any(w.called for w in waiting)
    pending[0].callback("first")
    assert [w.result for w in waiting] == [{"Cookie": "AuthSession=first"}] * 3
    # Three requests got 401 with that cookie: each renews, and they share the next login.
    assert [await auth.renew() for _ in range(3)] == [True] * 3
    retries = [Deferred.fromCoroutine(auth.headers()) for _ in range(3)]
    assert await auth.renew() is True  # a late 401 while that login runs: it is kept
    pending[1].callback("second")
    assert len(pending) == 2
    assert [r.result for r in retries] == [{"Cookie": "AuthSession=second"}] * 3


async def test_session_auth_logs_in_again_once_the_cookie_is_max_age_old() -> None:
    clock = Clock()
    cookies = iter(["first", "second", "third"])

    async def login(name: str, password: str) -> str:
        return next(cookies)

    auth = SessionAuth("bob", "pw", login, clock=clock, max_age=60)
    assert await auth.headers() == {"Cookie": "AuthSession=first"}
    clock.advance(59)
    assert await auth.headers() == {"Cookie": "AuthSession=first"}
    auth.observe(["AuthSession=refreshed; Path=/"])  # CouchDB's refresh restarts the age
    clock.advance(59)
    assert await auth.headers() == {"Cookie": "AuthSession=refreshed"}
    clock.advance(1)
    assert await auth.headers() == {"Cookie": "AuthSession=second"}


#: CouchDB 3.x's default ``[chttpd_auth] timeout``: a session cookie older than this is
#: no longer honoured (the request is then served as anonymous, not answered 401).
COUCHDB_SESSION_TIMEOUT = 600


async def test_a_default_session_is_renewed_before_couchdb_lets_its_cookie_expire() -> None:
    clock = Clock()
    cookies = iter(["first", "second"])

    async def login(name: str, password: str) -> str:
        return next(cookies)

    auth = SessionAuth("bob", "pw", login, clock=clock)  # the default max_age
    assert await auth.headers() == {"Cookie": "AuthSession=first"}
    # A request sent a second before CouchDB's own expiry would arrive with a cookie
    # CouchDB no longer honours (and it answers as anonymous, without a 401).
    clock.advance(COUCHDB_SESSION_TIMEOUT - 1)
    assert await auth.headers() == {"Cookie": "AuthSession=second"}


async def test_a_cleared_session_cookie_is_not_adopted() -> None:
    async def login(name: str, password: str) -> str:
        return "first"

    auth = SessionAuth("bob", "pw", login)
    assert await auth.headers() == {"Cookie": "AuthSession=first"}
    auth.observe(["AuthSession=; Version=1; Path=/; HttpOnly; Max-Age=0"])
    assert await auth.headers() == {"Cookie": "AuthSession=first"}


async def test_couch_server_session_auth_uses_the_max_age_it_is_given() -> None:
    from gateway.couch import CouchServer

    clock = Clock()
    server = CouchServer("http://127.0.0.1:9", reactor=clock)  # never contacted
    cookies = iter(["first", "second"])

    async def login(name: str, password: str) -> str:
        return next(cookies)

    server.transport.login = login  # type: ignore[method-assign]
    auth = server.session_auth("bob", "pw", max_age=10)
    assert await auth.headers() == {"Cookie": "AuthSession=first"}
    clock.advance(10)
    assert await auth.headers() == {"Cookie": "AuthSession=second"}


@pytest.mark.parametrize("password", ["s3cr3t/x", "s3cr3t#x", "s3cr3t?x",
                                      # digits first: they parse as a port of host "admin"
                                      "1234/s3cr3t", "5984?s3cr3t", "99#s3cr3t"])
def test_a_password_not_percent_encoded_is_refused_without_being_quoted(password: str) -> None:
    from twisted.internet.task import Clock

    url = f"http://admin:{password}@127.0.0.1:5984"
    with pytest.raises(ValueError, match="percent-encode") as refused:
        Database("x", url=url, reactor=Clock())
    assert "s3cr3t" not in str(refused.value) and refused.value.__cause__ is None
    assert refused.value.__context__ is None or "s3cr3t" not in str(refused.value.__context__)


def test_query_numbers_and_json_must_be_finite() -> None:
    from gateway.errors import InvalidRequest
    from gateway.http.contract import _coerce, strict_json

    number = {"schema": {"type": "number"}}
    assert _coerce("n", "1.5", number) == 1.5
    for raw in ("nan", "inf", "-Infinity", "x"):
        with pytest.raises(InvalidRequest, match="must be a number"):
            _coerce("n", raw, number)
    assert strict_json('{"a": [1e3, -0.5]}') == {"a": [1000.0, -0.5]}
    for text in ("NaN", "[Infinity]", '{"a": -Infinity}', "1e999", '{"a": [-1E400]}'):
        with pytest.raises(ValueError):
            strict_json(text)


@pytest.mark.parametrize(("env", "message"), [
    *[({name: "nan"}, f"{name}: 'nan' is not a finite number") for name in (
        "WALLABY_HEADER_TIMEOUT", "WALLABY_WS_PING_INTERVAL", "WALLABY_LOGIN_LOCKOUT_SECONDS",
        "WALLABY_SHUTDOWN_GRACE", "WALLABY_RATE_LIMIT_PER_SECOND", "WALLABY_WS_AUTH_RECHECK",
        "WALLABY_REQUEST_TIMEOUT")],
    ({"WALLABY_SHUTDOWN_GRACE": "inf"}, "'inf' is not a finite number"),
    *[({"COUCHDB_URL": url}, "COUCHDB_URL: not an http:// or https:// URL with a host")
      for url in ("127.0.0.1:5984", "ftp://x", "not a url", "http://")],
    ({"WALLABY_COOKIE_NAME": "a;b"}, "WALLABY_COOKIE_NAME: 'a;b' is not a cookie name"),
    ({"WALLABY_COOKIE_NAME": "a b"}, "is not a cookie name"),
    # An origin no browser ever sends: CORS silently off for that app.
    *[({"WALLABY_CORS_ORIGINS": f"https://ok.example, {origin}"},
       f"WALLABY_CORS_ORIGINS: {origin!r} is not an origin")
      for origin in ("https://app.example.com/", "app.example.com", "https://app.example.com/x",
                     "null", "https://user@app.example.com", "https://app.example.com?x",
                     "https://app.example.com:99999", "https://*.example.com",
                     "https://app example", "https://app.example\\")],
    ({"WALLABY_ATTACHMENT_CSP": "sandbox\r\nSet-Cookie: x=1"},
     "WALLABY_ATTACHMENT_CSP: a header value cannot hold control characters"),
    # int() takes other scripts' digits and underscores.
    *[({"WALLABY_PORT": port}, f"WALLABY_PORT: {port!r} is not a whole number")
      for port in ("\u0663\u0663", "8_080", "0x50")],
])
def test_settings_that_parse_but_cannot_work_are_refused(env: dict[str, str], message: str) -> None:
    """nan passed every range check (nan < 0 is false): a timeout of nan dropped every
    connection, a lockout of nan turned it off."""
    with pytest.raises(ValueError) as refused:
        Settings.from_env(env)
    assert message in str(refused.value)


def test_byte_ranges_follow_rfc_9110() -> None:
    from gateway.http.streaming import parse_range

    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-5", 100) == (95, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=0-500", 100) == (0, 99)
    # Not a range the gateway cuts: the whole body, 200.
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=5", "bytes=9-3", "bytes=-",
                   "bytes=+1-2", "bytes=1_0-2_0", "bytes=1 -2", "bytes=0x1-2"):
        assert parse_range(header, 100) is None, header
    # A zero-length body has no bytes to name: a suffix takes the whole of it.
    assert parse_range("bytes=-5", 0) is None
    for header, total in (("bytes=100-", 100), ("bytes=0-", 0), ("bytes=-0", 100)):
        with pytest.raises(ValueError):
            parse_range(header, total)


def test_settings_from_environment() -> None:
    settings = Settings.from_env({"WALLABY_PORT": "9000", "WALLABY_CORS_ORIGINS": "http://a, http://b",
                                  "WALLABY_COOKIE_SECURE": "true", "COUCHDB_URL": "http://c:1"})
    assert settings.port == 9000 and settings.cookie_secure is True
    assert settings.cors_origins == ("http://a", "http://b")
    assert settings.couchdb_url == "http://c:1"
    with pytest.raises(ValueError, match="WALLABY_PORT"):
        Settings.from_env({"WALLABY_PORT": "eighty"})
    assert "password" not in repr(Settings(couchdb_password="hunter2")) or "hunter2" not in repr(
        Settings(couchdb_password="hunter2"))


def test_the_highest_tcp_port_is_accepted_and_the_next_refused() -> None:
    assert Settings.from_env({"WALLABY_PORT": "65535"}).port == 65535
    with pytest.raises(ValueError, match=r"^WALLABY_PORT: 65536 is not a TCP port"):
        Settings.from_env({"WALLABY_PORT": "65536"})


@pytest.mark.parametrize("variable", [
    "WALLABY_MAX_BODY_BYTES", "WALLABY_MAX_ATTACHMENT_BYTES", "WALLABY_REQUEST_TIMEOUT",
    "WALLABY_RATE_LIMIT_BURST", "WALLABY_WS_MAX_SUBSCRIPTIONS", "WALLABY_WS_MAX_USER_FEEDS",
    "WALLABY_WS_MAX_FEEDS", "WALLABY_WS_MAX_MESSAGE_BYTES", "WALLABY_WS_QUEUE_BYTES",
    "WALLABY_FEED_HEARTBEAT_MS", "WALLABY_BUFFER_ANSWER_BYTES", "WALLABY_SEND_STALL_TIMEOUT",
])
def test_sizes_and_durations_where_zero_cannot_work_refuse_zero(variable: str) -> None:
    with pytest.raises(ValueError, match=f"^{variable}: must be more than 0, not 0"):
        Settings.from_env({variable: "0"})


@pytest.mark.parametrize("variable", [
    "WALLABY_RATE_LIMIT_PER_SECOND", "WALLABY_LOGIN_MAX_FAILURES",
    "WALLABY_LOGIN_LOCKOUT_SECONDS", "WALLABY_SHUTDOWN_GRACE", "WALLABY_SHUTDOWN_DRAIN",
    "WALLABY_COMPRESS_MIN_BYTES", "WALLABY_WS_PING_INTERVAL", "WALLABY_WS_AUTH_RECHECK",
    "WALLABY_WS_SEND_THREADS", "WALLABY_GC_FREEZE_AFTER_MS", "WALLABY_HEADER_TIMEOUT",
    "WALLABY_IDLE_TIMEOUT",
])
def test_settings_where_zero_means_off_take_zero_and_refuse_negatives(variable: str) -> None:
    assert Settings.from_env({variable: "0"}) is not None
    with pytest.raises(ValueError, match=f"^{variable}: must be 0 or more, not -1"):
        Settings.from_env({variable: "-1"})


def test_an_attachment_csp_with_a_delete_character_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^WALLABY_ATTACHMENT_CSP: .*control"):
        Settings.from_env({"WALLABY_ATTACHMENT_CSP": "sandbox\x7f"})


@pytest.mark.parametrize(("raw", "value"), [
    *[(word, True) for word in ("1", "true", "YES", "On")],
    *[(word, False) for word in ("0", "false", "No", "OFF")],
])
def test_boolean_words(raw: str, value: bool) -> None:
    assert Settings.from_env({"WALLABY_COOKIE_SECURE": raw}).cookie_secure is value
    with pytest.raises(ValueError, match=r"^WALLABY_COOKIE_SECURE: not a boolean"):
        Settings.from_env({"WALLABY_COOKIE_SECURE": "maybe"})


@pytest.mark.parametrize(("variable", "default"), [
    ("WALLABY_SPLICE_DOWNLOADS", "true"), ("WALLABY_COOKIE_SECURE", "false"),
    ("WALLABY_PORT", "8080"), ("WALLABY_REQUEST_TIMEOUT", "30"),
])
@pytest.mark.parametrize("raw", ["", "  "])
def test_an_empty_yes_no_or_number_setting_is_refused_not_read_as_a_value(
    variable: str, default: str, raw: str
) -> None:
    """A compose file's ``FOO=${FOO:-}`` sets FOO empty: an empty boolean read as false
    silently turned off a default-on setting (WALLABY_SPLICE_DOWNLOADS)."""
    with pytest.raises(ValueError, match=(
            f"^{variable}: empty; unset it for the default \\({default}\\) or give a value")):
        Settings.from_env({variable: raw})


def test_an_empty_couchdb_url_is_refused_saying_to_unset_it_for_the_embedded_server() -> None:
    """Never the embedded server for an empty COUCHDB_URL: it serves another data store."""
    from gateway.__main__ import _parser, settings_from

    with pytest.raises(ValueError, match=r"^COUCHDB_URL: empty; unset it .*embedded"):
        Settings.from_env({"COUCHDB_URL": ""})
    with pytest.raises(ValueError, match=r"^--couchdb-url \(or COUCHDB_URL\): empty; unset it"):
        settings_from(_parser().parse_args(["run", "--couchdb-url", ""]), {})


def test_a_ca_file_is_read_at_start_up_and_refused_naming_its_variable(tmp_path: Any) -> None:
    from gateway.__main__ import _trust_root
    from tests.support import tlscerts
    assert _trust_root(Settings()) is None
    with pytest.raises(ValueError, match=r"^WALLABY_COUCHDB_CA_FILE: cannot read"):
        _trust_root(Settings(couchdb_ca_file=str(tmp_path / "missing.pem")))
    (tmp_path / "empty.pem").write_text("no certificate here\n")
    with pytest.raises(ValueError, match=r"^WALLABY_COUCHDB_CA_FILE: .* holds no PEM"):
        _trust_root(Settings(couchdb_ca_file=str(tmp_path / "empty.pem")))
    bundle = tmp_path / "bundle.pem"  # two CAs in one file, as CA bundles are
    bundle.write_bytes(tlscerts.make_ca(tmp_path, "One").path.read_bytes()
                       + tlscerts.make_ca(tmp_path, "Two").path.read_bytes())
    assert _trust_root(Settings(couchdb_ca_file=str(bundle))) is not None


def test_a_bad_flag_is_named_as_the_flag_not_only_as_its_variable() -> None:
    from gateway.__main__ import _parser, settings_from
    with pytest.raises(ValueError, match=r"^--port \(or WALLABY_PORT\): 70000 is not a TCP port"):
        settings_from(_parser().parse_args(["run", "--port", "70000"]), {})
    with pytest.raises(ValueError, match=r"^--request-timeout \(or WALLABY_REQUEST_TIMEOUT\)"):
        settings_from(_parser().parse_args(["run", "--request-timeout", "nan"]), {})
    with pytest.raises(ValueError, match=r"^WALLABY_PORT: 70000"):
        settings_from(_parser().parse_args(["run"]), {"WALLABY_PORT": "70000"})
    with pytest.raises(ValueError, match=r"^--data-dir \(or WALLABY_EMBEDDED_DATA_DIR\): empty"):
        settings_from(_parser().parse_args(["run", "--data-dir", ""]), {})


def test_cors_origins_are_kept_as_browsers_serialize_them() -> None:
    settings = Settings.from_env({"WALLABY_CORS_ORIGINS":
                                  "https://App.Example.com:443, http://127.0.0.1:8080, "
                                  "HTTP://[::1]:80, capacitor://localhost, *, "
                                  "https://bücher.example, http://[0:0:0:0:0:0:0:1]:8080, "
                                  "http://[::ffff:127.0.0.1], https://my_app.example"})
    assert settings.cors_origins == ("https://app.example.com", "http://127.0.0.1:8080",
                                     "http://[::1]", "capacitor://localhost", "*",
                                     "https://xn--bcher-kva.example", "http://[::1]:8080",
                                     "http://[::ffff:7f00:1]", "https://my_app.example")
    # As Chromium's `new URL(u).origin` writes them (UTS #46 non-transitional, WHATWG
    # IPv4 forms), checked in Chromium 156 by a review: IDNA 2003 wrote faß.de as fass.de.
    for configured, sent in (("https://faß.de", "https://xn--fa-hia.de"),
                             ("https://σόλος.gr", "https://xn--wxaijb9b.gr"),
                             ("http://127.1", "http://127.0.0.1"),
                             ("http://0x7f.0.0.1:80", "http://127.0.0.1"),
                             ("https://example.com.", "https://example.com."),
                             ("https://-x.example.com", "https://-x.example.com")):
        assert Settings.from_env({"WALLABY_CORS_ORIGINS": configured}).cors_origins == (sent,)
    assert Settings.from_env({"WALLABY_CORS_ORIGINS": "ftp://example.com:21"}).cors_origins \
        == ("ftp://example.com",)
    # inet_aton stops at whitespace: "10.0.0.1 evil.7" became http://10.0.0.1
    for never_sent in ("http://[fe80::1%25eth0]", "http://1.2.3.4.5", "http://999.1.1.1",
                       "http://10.0.0.1 evil.7", "http://1.2.3.4\x0b.5", "http://1.2.3.4\x0c.5"):
        with pytest.raises(ValueError, match="WALLABY_CORS_ORIGINS"):
            Settings.from_env({"WALLABY_CORS_ORIGINS": never_sent})
    assert Settings().with_overrides(cors_origins=("https://A.example",)).cors_origins == (
        "https://a.example",)


def test_forwarded_cookie_sessions_adopt_refreshed_cookies() -> None:
    from gateway.couch.auth import ForwardedAuth

    session = ForwardedAuth({"Cookie": "AuthSession=old"})
    session.observe(["AuthSession=new; Version=1; Path=/; HttpOnly"])
    assert session.session == "new"
    session.observe(["AuthSession=; Max-Age=0"])  # a logout-style clear is not adopted
    assert session.session == "new"
    basic = ForwardedAuth({"Authorization": "Basic eDp5"})
    basic.observe(["AuthSession=from-basic; Path=/"])  # CouchDB 3.4 sends one for Basic too
    assert basic.session is None


@pytest.mark.parametrize(("variable", "value", "complaint"), [
    ("WALLABY_AUTH_MODE", "bogus", "not one of forward, jwt, proxy"),
    ("WALLABY_LOG_FORMAT", "xml", "not one of json, text"),
    ("WALLABY_COOKIE_SAMESITE", "weird", "not one of Strict, Lax, None"),
    ("WALLABY_PORT", "99999", "not a TCP port"),
    ("WALLABY_MAX_BODY_BYTES", "-5", "more than 0"),
    ("WALLABY_REQUEST_TIMEOUT", "-3", "more than 0"),
    ("WALLABY_RATE_LIMIT_BURST", "0", "more than 0"),
    ("WALLABY_RATE_LIMIT_PER_SECOND", "-1", "0 or more"),
    ("WALLABY_WS_PING_INTERVAL", "-20", "0 or more"),
    ("WALLABY_AUTH_MODE", "proxy", "set it"),  # without WALLABY_PROXY_SECRET
])
def test_settings_out_of_range_are_refused_naming_the_variable(
    variable: str, value: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=f"^({variable}|WALLABY_PROXY_SECRET): .*{complaint}"):
        Settings.from_env({variable: value})


def test_settings_words_are_case_insensitive_and_zero_means_off() -> None:
    settings = Settings.from_env({"WALLABY_COOKIE_SAMESITE": "strict", "WALLABY_AUTH_MODE": "JWT",
                                  "WALLABY_RATE_LIMIT_PER_SECOND": "0", "WALLABY_PORT": "0"})
    assert (settings.cookie_samesite, settings.auth_mode) == ("Strict", "jwt")
    assert settings.rate_limit_per_second == 0 and settings.port == 0


def test_an_unexpected_error_is_logged_with_its_cause_and_answered_as_json() -> None:
    """render_error runs in Klein's error handler, outside any ``except`` block."""
    from twisted.logger import globalLogPublisher
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.http.responses import render_error

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        request = DummyRequest([b"api", b"v1"])
        request.path = b"/api/v1"
        body = render_error(request, RuntimeError("boom"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert request.responseCode == 500
    assert json.loads(body)["error"] == "internal_error"
    assert "boom" not in body.decode()
    logged = [e["log_failure"] for e in events if e.get("log_failure") is not None]
    assert len(logged) == 1 and logged[0].check(RuntimeError)


def test_failed_logins_lock_a_pair_for_the_window() -> None:
    from twisted.internet.task import Clock

    from gateway.errors import RateLimited
    from gateway.http.login_guard import FailedLogins

    clock = Clock()
    guard = FailedLogins(clock.seconds, limit=3, window=100)
    for _ in range(3):
        guard.check("1.2.3.4", "Ann")
        guard.failed("1.2.3.4", "ann")
        clock.advance(10)
    with pytest.raises(RateLimited) as refused:
        guard.check("1.2.3.4", "ANN")  # names compare case-insensitively
    assert refused.value.retry_after == pytest.approx(70)
    guard.check("5.6.7.8", "ann")  # another client
    guard.check("1.2.3.4", "bob")  # another account
    clock.advance(71)  # the oldest failure is out of the window
    guard.check("1.2.3.4", "ann")
    FailedLogins(clock.seconds, limit=0).check("1.2.3.4", "ann")  # 0: off


def test_failed_logins_keep_lockouts_through_a_flood_of_other_failures() -> None:
    from twisted.internet.task import Clock

    from gateway.errors import RateLimited
    from gateway.http.login_guard import FailedLogins

    clock = Clock()
    guard = FailedLogins(clock.seconds, limit=2, window=100, max_keys=10, max_locked=3)
    for account in ("ann", "bob", "cat"):
        guard.failed("1.2.3.4", account)
        guard.failed("1.2.3.4", account)
    guard.failed("1.2.3.4", "dan")  # one failure: still counting
    clock.advance(1)
    for i in range(1000):  # made-up names: each one failure
        guard.failed("6.6.6.6", f"junk{i}")
    for account in ("ann", "bob", "cat"):
        with pytest.raises(RateLimited):
            guard.check("1.2.3.4", account)
    assert ("1.2.3.4", "dan") not in guard._failures  # a counting pair may be forgotten
    assert len(guard._failures) == 10

    # At the ceiling (3 lockouts) a fourth is refused while remembered, not guaranteed:
    # the flood pushes it out, never one of the three.
    guard.failed("1.2.3.4", "eve")
    guard.failed("1.2.3.4", "eve")
    with pytest.raises(RateLimited):
        guard.check("1.2.3.4", "eve")
    for i in range(10):
        guard.failed("6.6.6.6", f"more{i}")
    guard.check("1.2.3.4", "eve")
    with pytest.raises(RateLimited):
        guard.check("1.2.3.4", "ann")

    # Lockouts end with their window and make room; expired counting pairs go first.
    clock.advance(100)
    guard.failed("1.2.3.4", "eve")
    assert len(guard._failures) == 1  # the flood's pairs were out of the window
    guard.failed("1.2.3.4", "eve")
    assert list(guard._locked) == [("1.2.3.4", "eve")]
    guard.check("1.2.3.4", "ann")
    guard.succeeded("1.2.3.4", "eve")
    guard.check("1.2.3.4", "eve")


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("203.0.113.9", ["1.1.1.1"], "203.0.113.9"),           # not a trusted peer: header ignored
    ("10.0.0.2", ["198.51.100.7"], "198.51.100.7"),         # the balancer names the client
    ("10.0.0.2", ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),  # a forged left part is ignored
    ("10.0.0.2", ["198.51.100.7, 10.0.0.3"], "198.51.100.7"),  # two trusted hops
    ("10.0.0.2", ["not-an-ip, 198.51.100.7"], "198.51.100.7"),
    ("10.0.0.2", ["198.51.100.7, garbage"], "10.0.0.2"),    # garbled chain: the peer
    ("10.0.0.2", [], "10.0.0.2"),
])
def test_client_address_behind_trusted_proxies(
    peer: str, forwarded: list[str], client: str
) -> None:
    from twisted.internet.address import IPv4Address
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.http.client_address import ClientAddress

    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", peer, 1234)
    for value in forwarded:
        request.requestHeaders.addRawHeader(b"x-forwarded-for", value.encode())
    assert ClientAddress(["10.0.0.0/8"]).of(request) == client
    assert ClientAddress().of(request) == peer  # no trusted proxies: always the peer
    with pytest.raises(ValueError, match="WALLABY_TRUSTED_PROXIES"):
        Settings.from_env({"WALLABY_TRUSTED_PROXIES": "10.0.0.0/8,nonsense"})


@pytest.mark.parametrize(("address", "prefix", "key"), [
    ("198.51.100.7", 64, "198.51.100.7"),
    ("::ffff:198.51.100.7", 64, "198.51.100.7"),  # IPv4-mapped: the IPv4 client
    ("2001:db8:4a1:7::1", 64, "2001:db8:4a1:7::/64"),
    ("2001:db8:4a1:7:abcd:1:2:3", 64, "2001:db8:4a1:7::/64"),  # same /64, same client
    ("2001:db8:4a1:7:abcd:1:2:3", 48, "2001:db8:4a1::/48"),
    ("2001:db8:4a1:7:abcd:1:2:3", 128, "2001:db8:4a1:7:abcd:1:2:3/128"),
    ("unknown", 64, "unknown"),
])
def test_client_keys_count_an_ipv6_client_by_its_prefix(
    address: str, prefix: int, key: str
) -> None:
    from gateway.http.client_address import ClientAddress

    assert ClientAddress(ipv6_prefix=prefix).key(address) == key


def test_ipv6_client_prefix_is_validated_and_mapped_proxies_are_trusted() -> None:
    from twisted.internet.address import IPv6Address
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.http.client_address import ClientAddress

    assert Settings.from_env({"WALLABY_IPV6_CLIENT_PREFIX": "56"}).ipv6_client_prefix == 56
    for bad in ("0", "31", "129"):
        with pytest.raises(ValueError, match="WALLABY_IPV6_CLIENT_PREFIX"):
            Settings.from_env({"WALLABY_IPV6_CLIENT_PREFIX": bad})
    # A dual-stack socket sees an IPv4 proxy as ::ffff:a.b.c.d: still the trusted proxy.
    request = DummyRequest([b""])
    request.client = IPv6Address("TCP", "::ffff:10.0.0.2", 1234)
    request.requestHeaders.addRawHeader(b"x-forwarded-for", b"198.51.100.7")
    assert ClientAddress(["10.0.0.0/8"]).of(request) == "198.51.100.7"


def test_refused_connections_are_summarised_once_per_interval_and_flushed() -> None:
    from twisted.internet.task import Clock

    from gateway.accept_errors import AcceptErrorSummary

    seen: list[dict[str, Any]] = []
    clock = Clock()
    summary = AcceptErrorSummary(seen.append, clock, interval=10)
    closed = {"log_format": "EMFILE recovery: Closed socket from {address}", "address": "x"}
    summary({"log_format": "hello {who}", "who": "world"})  # anything else passes through
    for _ in range(3):
        summary({"log_format": "EMFILE encountered; releasing reserved file descriptor."})
        summary(closed)
    assert seen[0]["log_format"] == "hello {who}"
    assert len(seen) == 2 and seen[1]["reasons"] == "1 EMFILE" and "too many open files" in \
        seen[1]["hint"]
    clock.advance(10)  # the burst's rest, without waiting for another refusal
    assert len(seen) == 3 and seen[2]["reasons"] == "2 EMFILE"
    assert summary.refused == 3
    clock.advance(10)
    summary({"log_format": "Could not accept new connection ({acceptError})",
             "acceptError": "ECONNABORTED"})
    assert seen[3]["reasons"] == "1 ECONNABORTED" and seen[3]["hint"] == ""
    clock.advance(60)
    assert len(seen) == 4  # nothing left to report


_CLOSED = {"log_format": "EMFILE recovery: Closed socket from {address}", "address": "x"}


def test_a_flood_keeps_one_pending_flush_and_one_summary_per_interval() -> None:
    """Thousands of refusals a second for a minute: one timer pending at any time (not
    one per refused connection), one line per interval, and every refusal counted once."""
    from gateway.accept_errors import AcceptErrorSummary

    seen: list[dict[str, Any]] = []
    clock = Clock()
    summary = AcceptErrorSummary(seen.append, clock, interval=10)
    for _second in range(60):
        for _ in range(1000):
            summary({"log_format": "EMFILE encountered; releasing reserved file descriptor."})
            summary(_CLOSED)
            summary({"log_format": "Re-reserving EMFILE recovery file descriptor."})
            assert len(clock.getDelayedCalls()) <= 1
        clock.advance(1)
    clock.advance(10)
    assert summary.refused == 60_000
    counts = [int(event["reasons"].split()[0]) for event in seen]
    assert sum(counts) == 60_000, counts
    assert 6 <= len(seen) <= 8, [event["since"] for event in seen]
    assert clock.getDelayedCalls() == []


def test_the_flush_comes_one_interval_after_the_last_summary() -> None:
    """The rest of a burst is reported ``interval`` after the last report, not
    ``interval`` after the refusal that came later."""
    from gateway.accept_errors import AcceptErrorSummary

    seen: list[dict[str, Any]] = []
    clock = Clock()
    summary = AcceptErrorSummary(seen.append, clock, interval=10)
    summary(_CLOSED)  # reported at once (t=0)
    clock.advance(7)
    summary(_CLOSED)  # t=7: to be flushed at t=10
    clock.advance(3)
    assert len(seen) == 2 and seen[1]["reasons"] == "1 EMFILE", seen
    assert seen[1]["since"] == " in the last 10 s"


def _enfile_hint() -> str:
    from gateway.accept_errors import AcceptErrorSummary

    seen: list[dict[str, Any]] = []
    summary = AcceptErrorSummary(seen.append, Clock(), interval=10)
    summary({"log_format": "Could not accept new connection ({acceptError})",
             "acceptError": "ENFILE"})
    assert seen[0]["reasons"] == "1 ENFILE"
    return str(seen[0]["hint"])


def test_enfile_gets_an_open_files_hint_too() -> None:
    assert "open files" in _enfile_hint()


def test_the_enfile_hint_names_the_system_wide_limit() -> None:
    """ENFILE is the system's open-file table being full (accept(2): "The system-wide
    limit on the total number of open files has been reached"); raising the gateway's
    own ulimit -n does not help. The hint must not call it EMFILE nor only point there."""
    hint = _enfile_hint()
    assert "EMFILE:" not in hint, hint
    assert "file-max" in hint or "system-wide" in hint, hint


def test_a_summary_of_emfile_and_enfile_gives_each_its_own_hint() -> None:
    from gateway.accept_errors import AcceptErrorSummary

    seen: list[dict[str, Any]] = []
    clock = Clock()
    summary = AcceptErrorSummary(seen.append, clock, interval=10)
    summary({"log_format": "EMFILE recovery: Closed socket from {address}", "address": "x"})
    summary({"log_format": "EMFILE recovery: Closed socket from {address}", "address": "x"})
    summary({"log_format": "Could not accept new connection ({acceptError})",
             "acceptError": "ENFILE"})
    clock.advance(10)
    assert seen[1]["reasons"] == "1 EMFILE, 1 ENFILE"
    assert "(EMFILE: " in seen[1]["hint"] and "ulimit -n" in seen[1]["hint"]
    assert "(ENFILE: " in seen[1]["hint"] and "fs.file-max" in seen[1]["hint"]


def test_the_reactor_clock_becomes_monotonic_only_before_anything_is_scheduled() -> None:
    """gateway/monotonic.py: timers placed on the wall clock would fire decades early."""
    from twisted.internet.base import ReactorBase

    class Reactor(ReactorBase):
        def installWaker(self) -> None:
            pass

    reactor = Reactor()  # type: ignore[no-untyped-call]
    use_monotonic_clock(reactor)
    before = time.monotonic()
    assert before <= reactor.seconds() <= time.monotonic()
    call = reactor.callLater(5, lambda: None)
    assert before + 5 <= call.getTime() <= time.monotonic() + 5
    with pytest.raises(RuntimeError, match="before anything is scheduled"):
        use_monotonic_clock(reactor)


def test_deep_json_reads_and_writes_to_its_limit_and_names_it_beyond() -> None:
    """gateway/deep_json.py: deeper than the recursion limit, up to MAX_DEPTH levels."""
    from gateway import deep_json

    text = '{"v":' + "[" * 9000 + '"]]}"' + "]" * 9000 + "}"
    value = deep_json.loads(text)
    assert deep_json.dumps(value, separators=(",", ":")) == text
    assert deep_json.dumps(deep_json.loads(text.encode()), separators=(",", ":")) == text
    with pytest.raises(deep_json.NestedTooDeep, match="deeper than 10000 levels"):
        deep_json.loads("[" * 10_001 + "]" * 10_001)
    with pytest.raises(deep_json.NestedTooDeep):
        deep_json.loads("[" * 5_000_000)  # unclosed: stops counting past the limit
    with pytest.raises(ValueError, match="Expecting"):
        deep_json.loads("[" * 2000 + "}")


def test_an_abandoned_login_attempt_is_counted_by_its_real_answer() -> None:
    """FailedLogins.attempt: a client that leaves (its handler cancelled) does not stop
    the verification; a wrong password then counts, a right one locks nobody out."""
    from twisted.internet.defer import CancelledError

    from gateway.errors import Unauthorized
    from gateway.http.login_guard import FailedLogins

    clock = Clock()
    guard = FailedLogins(clock.seconds, limit=2, window=100)
    answers: list[Deferred[str]] = []

    def login() -> Deferred[str]:
        answers.append(Deferred())
        return answers[-1]

    for password in ("right", "right", "right"):  # a page's requests, each abandoned
        waiting = Deferred.fromCoroutine(guard.attempt("c", "ann", login, password))
        waiting.cancel()
        assert isinstance(waiting.result, Failure) and waiting.result.check(CancelledError)
        waiting.addErrback(lambda _: None)
        answers[-1].callback("ok")  # CouchDB answers afterwards: success
    assert guard._trying == {}  # the verifications ended
    guard.check("c", "ann")
    for guess in ("g1", "g2"):  # guesses abandoned before their answer
        waiting = Deferred.fromCoroutine(guard.attempt("c", "ann", login, guess))
        waiting.cancel()
        waiting.addErrback(lambda _: None)
    for answer in answers[-2:]:
        answer.errback(Unauthorized("Name or password is incorrect."))
    with pytest.raises(RateLimited):
        guard.check("c", "ann")


@pytest.mark.parametrize(("url", "complaint"), [
    ("http://admin:pw@-bad-.example:5984", "COUCHDB_URL: '-bad-.example' is not a host name"),
    ("http://a b:5984", "COUCHDB_URL: 'a b' is not a host name"),
    ("http://bücher.example:5984",
     "COUCHDB_URL: write the host 'bücher.example' in its ASCII form (xn--bcher-kva.example)"),
    ("https://couch_db:6984", "COUCHDB_URL: 'couch_db': an https:// host must be a name"),
])
def test_a_couchdb_url_the_gateway_could_never_connect_to_is_refused(
    url: str, complaint: str
) -> None:
    """Refused at start, not answered 500 at every request."""
    with pytest.raises(ValueError, match=f"^{re.escape(complaint)}"):
        Settings(couchdb_url=url)


def test_an_upstream_host_name_with_an_underscore_goes_to_the_resolver_as_it_is() -> None:
    """``couch_db`` (a docker compose service name): Twisted's ``HostnameEndpoint`` would
    IDNA-refuse it ("invalid hostname") before asking any resolver."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import URI

    from gateway.couch.transport import _Endpoints

    asked: list[str] = []

    class Resolver:
        def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,  # noqa: N803
                            *args: Any, **kwargs: Any) -> Any:
            asked.append(hostName)
            receiver.resolutionBegan(None)
            receiver.addressResolved(IPv4Address("TCP", "127.0.0.1", portNumber))
            receiver.resolutionComplete()
            return None

    reactor = MemoryReactorClock()
    reactor.installNameResolver(Resolver())
    assert Settings(couchdb_url="http://admin:pw@couch_db:5984").couchdb_url
    endpoint = _Endpoints(reactor).endpointForURI(URI.fromBytes(b"http://couch_db:5984/"))
    endpoint.connect(Factory.forProtocol(Protocol))
    reactor.advance(0)
    assert asked == ["couch_db"]
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 5984)]


@pytest.mark.parametrize(("url", "complaint"), [
    ("http://127.0.0.1:99999", "COUCHDB_URL: port 99999 is not a TCP port"),
    ("http://[::1]:70000", "COUCHDB_URL: port 70000 is not a TCP port"),
    ("http://couch.example:0", "COUCHDB_URL: port 0 is not a TCP port"),
])
def test_an_out_of_range_couchdb_port_is_named(url: str, complaint: str) -> None:
    """Not blamed on a password that was not percent-encoded (the URL has none)."""
    with pytest.raises(ValueError, match=f"^{re.escape(complaint)}"):
        Settings(couchdb_url=url)


@pytest.mark.parametrize(("variable", "flag", "raw"), [
    ("WALLABY_REQUEST_TIMEOUT", "--request-timeout", "1_0"),
    ("WALLABY_REQUEST_TIMEOUT", "--request-timeout", "\u0663\u0660"),
    ("WALLABY_REQUEST_TIMEOUT", "--request-timeout", "nan"),
    ("WALLABY_MAX_BODY_BYTES", "--max-body-bytes", "1_000"),
    ("WALLABY_MAX_BODY_BYTES", "--max-body-bytes", "\u0663\u0660"),
    ("WALLABY_PORT", "--port", "-5"),
    ("WALLABY_PORT", "--port", "8_080"),
])
def test_numbers_are_read_alike_from_variables_and_flags(
    variable: str, flag: str, raw: str
) -> None:
    """ASCII digits only, whole or decimal: ``float()`` and argparse's ``int()`` took
    ``1_0`` as 10 and other scripts' digits."""
    from gateway.__main__ import _parser, settings_from

    with pytest.raises(ValueError, match=f"^{variable}: "):
        settings_from(_parser().parse_args(["run"]), {variable: raw})
    with pytest.raises(ValueError, match=f"^{re.escape(flag)} \\(or {variable}\\): "):
        settings_from(_parser().parse_args(["run", flag, raw]), {})


def test_flags_and_variables_take_the_same_words_and_numbers() -> None:
    from gateway.__main__ import _parser, settings_from

    by_flags = settings_from(_parser().parse_args(
        ["run", "--log-format", "JSON", "--auth-mode", "Proxy", "--request-timeout", "2.5e1",
         "--max-body-bytes", "+1000", "--cors-origins", "http://a, http://b"]),
        {"WALLABY_PROXY_SECRET": "s"})
    by_variables = Settings.from_env({
        "WALLABY_LOG_FORMAT": "JSON", "WALLABY_AUTH_MODE": "Proxy", "WALLABY_PROXY_SECRET": "s",
        "WALLABY_REQUEST_TIMEOUT": "2.5e1", "WALLABY_MAX_BODY_BYTES": "+1000",
        "WALLABY_CORS_ORIGINS": "http://a, http://b"})
    assert by_flags == by_variables
    assert (by_flags.log_format, by_flags.auth_mode, by_flags.request_timeout) == (
        "json", "proxy", 25.0)
    assert by_flags.max_body_bytes == 1000 and by_flags.cors_origins == ("http://a", "http://b")


@pytest.mark.parametrize("raw", ["-5", "65536", "70000", "1_0", "\u0663"])
def test_the_embedded_server_port_flag_is_a_tcp_port(raw: str, capsys: Any) -> None:
    from gateway.__main__ import _parser

    assert _parser().parse_args(["run", "--couch-port", "65535"]).couch_port == 65535
    with pytest.raises(SystemExit) as refused:
        _parser().parse_args(["run", "--couch-port", raw])
    assert refused.value.code == 2 and "--couch-port" in capsys.readouterr().err


@pytest.mark.parametrize(("written", "browsers_write"), [
    ("::", "::"), ("::1", "::1"), ("1::", "1::"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"),  # Python 3.13's compressed form is dotted
    ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),  # the longest run of zeros
    ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),  # the first of two as long
    ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),  # a single zero piece stays
    ("FE80::ABCD", "fe80::abcd"),
])
def test_ipv6_hosts_are_written_as_browsers_write_them(written: str, browsers_write: str) -> None:
    """The WHATWG URL standard's IPv6 serializer, on every Python version."""
    from gateway.config import whatwg_ipv6

    assert whatwg_ipv6(ipaddress.IPv6Address(written)) == browsers_write
