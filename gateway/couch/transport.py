"""The HTTP layer between the client and CouchDB.

One :class:`CouchTransport` owns a base URL, a persistent connection pool, a request
timeout and an :class:`~gateway.couch.auth.Auth`. Every request goes through the bare
pooled Twisted ``Agent``: no cookie jar (a shared transport must never store or replay
one user's cookies for another; session cookies are handled by the ``Auth``), no
redirects, nothing asks for gzip, and nothing buffers streams. The base URL is encoded
once; paths are built as bytes. Transport failures become
:class:`~gateway.errors.CouchUnreachable` / :class:`~gateway.errors.CouchTimeout`;
error answers become the matching :class:`~gateway.errors.CouchError`.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from twisted.internet import error as neterror
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import TaskStopped
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web._newclient import (
    RequestGenerationFailed,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from gateway import deep_json
from gateway.couch.auth import Auth, BasicAuth, NoAuth, session_cookie_from_headers
from gateway.couch.idle import IdleTimeout, PausingProducer, ProgressBody
from gateway.couch.pool import connection_pool
from gateway.couch.spill import SpilledBody, body_complete, read_or_spill
from gateway.couch.tls import HandshakeEndpoint, TLSHandshakeFailed, client_tls
from gateway.couch.urls import encode_query, join_url, path_bytes, split_credentials
from gateway.deep_json import NestedTooDeep
from gateway.errors import (
    AnswerLost,
    CouchError,
    CouchTimeout,
    CouchUnreachable,
    TooManyOpenFiles,
    Unauthorized,
    UpstreamServerError,
    UpstreamTLSFailed,
)

__all__ = [
    "BytesBody", "CouchResponse", "CouchTransport", "Reactor", "abandon", "abort_connection",
    "body_complete", "read_body", "stream_body", "unsure_of_write", "writes",
]

T = TypeVar("T")


class Reactor(IReactorTCP, IReactorTime):
    """The reactor features the client needs (TCP connections and a clock)."""


_NO_BODY: Final = object()
_UNREACHABLE_ERRORS = (
    neterror.ConnectError,
    neterror.DNSLookupError,
    neterror.ConnectionLost,
    neterror.ConnectionDone,
    ResponseNeverReceived,
    ResponseFailed,
    RequestTransmissionFailed,
    RequestGenerationFailed,
    RequestNotSent,
    webclient.PartialDownloadError,
)


def _unreachable(exc: Exception) -> Exception:
    """Translate a Twisted transport failure, keeping cancellation a cancellation.

    A request body that failed to produce (``RequestGenerationFailed``: a file that
    could not be read, say) is the caller's failure, not CouchDB's: its own exception.
    One that failed with a cancellation (its source went away: a client leaving an
    upload that streams upstream fails its body with a ``CancelledError``) stays one.
    """
    reasons = getattr(exc, "reasons", None) or []
    if any(reason.check(CancelledError) for reason in reasons):
        return CancelledError()
    if isinstance(exc, TLSHandshakeFailed):
        return UpstreamTLSFailed(exc.detail) if exc.refused else CouchUnreachable(exc.detail)
    if getattr(exc, "osError", None) in (errno.EMFILE, errno.ENFILE):
        return TooManyOpenFiles("the gateway has too many open files to connect to CouchDB "
                                "(its descriptor limit is reached); try again shortly")
    if isinstance(exc, RequestGenerationFailed):
        local = [r.value for r in reasons if not r.check(*_UNREACHABLE_ERRORS, TaskStopped)]
        if local and isinstance(local[0], Exception):
            return local[0]
    return CouchUnreachable(f"CouchDB is unreachable ({type(exc).__name__})")


#: Endpoints that take a ``POST`` without changing what CouchDB stores (queries, login).
_READS_BY_POST = frozenset({
    "_all_docs", "_bulk_get", "_changes", "_design_docs", "_explain", "_find",
    "_local_docs", "_missing_revs", "_revs_diff", "_session", "_view",
})
#: Failures that leave a request certainly unsent (so certainly not applied).
_NOT_SENT = (neterror.ConnectError, neterror.ConnectingCancelledError,
             neterror.DNSLookupError, RequestNotSent, RequestTransmissionFailed,
             RequestGenerationFailed)


def writes(method: str, segments: Sequence[str]) -> bool:
    """Whether a request may change what CouchDB stores."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return False
    return not (method == "POST" and _READS_BY_POST.intersection(segments[-3:]))


def unsure_of_write(
    exc: CouchUnreachable, method: str, segments: Sequence[str]
) -> CouchUnreachable:
    """A write that went out without an answer may have been applied: say so.

    No ``Retry-After`` then: a client sending it again could store a document twice. A
    write that certainly did not leave (refused connection) stays an invitation to retry.
    """
    if not writes(method, segments) or isinstance(exc.__cause__, _NOT_SENT) \
            or exc.retry_after is None:
        return exc
    unsure = "it may have been applied; read before writing again"
    if isinstance(exc, CouchTimeout):
        timed_out = CouchTimeout(f"{exc.reason}: {unsure}")
        timed_out.retry_after = None
        return timed_out
    return AnswerLost(f"CouchDB's answer to the {method} was lost ({exc.reason}): {unsure}")


async def _as_write_outcome(call: Awaitable[T], method: str, segments: Sequence[str]) -> T:
    """Await an exchange with CouchDB; a lost answer to a write says so (see above)."""
    try:
        return await call
    except CouchUnreachable as exc:
        unsure = unsure_of_write(exc, method, segments)
        if unsure is exc:
            raise
        raise unsure from exc


_JSON_TYPE: Final = [b"application/json"]
#: CouchDB answers ``attachments=true`` or ``open_revs`` with multipart unless told JSON.
_ACCEPT_JSON: Final = {b"accept": _JSON_TYPE}


def _progress(body: IBodyProducer | None, idle: IdleTimeout | None) -> IBodyProducer | None:
    """``body`` pushing ``idle`` back with every chunk it writes."""
    if body is None or idle is None:
        return body
    return ProgressBody(body, idle.touch)


class _AsciiHostnameEndpoint(HostnameEndpoint):
    """A ``HostnameEndpoint`` that gives an ASCII host name to the resolver as it is.

    ``HostnameEndpoint`` IDNA-checks every name, and IDNA refuses ``_``: every
    connection to ``couch_db`` (a docker compose service name, which Docker's DNS
    resolves) would fail with "invalid hostname". An ASCII name has nothing to encode;
    the resolver (``getaddrinfo``) takes it, and happy eyeballs work as before.
    """

    @staticmethod
    def _hostAsBytesAndText(host: bytes | str) -> tuple[bool, bytes, str]:  # noqa: N802
        if isinstance(host, bytes) and host.isascii():
            return False, host, host.decode("ascii")
        return HostnameEndpoint._hostAsBytesAndText(host)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """TCP endpoints for http, TCP then a whole TLS handshake for https, made once.

    ``Agent`` otherwise builds a ``HostnameEndpoint`` per request, IDNA-encoding the
    host name every time, even when the pool has a connection ready.
    """

    def __init__(self, reactor: Any, trust_root: IOpenSSLTrustRoot | None = None) -> None:
        self._reactor = reactor
        self._trust_root = trust_root
        self._made: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:  # noqa: N802
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            if uri.scheme not in (b"http", b"https"):
                raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
            endpoint = _AsciiHostnameEndpoint(self._reactor, uri.host, uri.port, timeout=10)
            if uri.scheme == b"https":
                endpoint = HandshakeEndpoint(self._reactor, endpoint,
                                             client_tls(uri.host, self._trust_root))
            self._made[key] = endpoint
        return endpoint


def _agent_for(reactor: Any, pool: webclient.HTTPConnectionPool) -> webclient.Agent:
    """The agent of a pool, made once (it holds no per-identity state).

    A transport is made per identity, i.e. per request, by :meth:`CouchTransport.with_auth`.
    """
    agent: webclient.Agent | None = vars(pool).get("_wallaby_agent")
    if agent is None:
        endpoints = _Endpoints(reactor, getattr(pool, "tls_trust_root", None))
        agent = webclient.Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        vars(pool)["_wallaby_agent"] = agent  # lives and dies with the pool
    return agent


@implementer(IBodyProducer)
class BytesBody:
    """A request body already in memory, written in one go.

    Twisted's ``FileBodyProducer`` would write it from a cooperator task, a reactor turn
    later (and through the global reactor's cooperator).

    Args:
        data: The body.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802
        """Write the whole body now."""
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        """Written at once: nothing to pause."""

    def resumeProducing(self) -> None:  # noqa: N802
        """Written at once: nothing to resume."""

    def stopProducing(self) -> None:  # noqa: N802
        """Written at once: nothing to stop."""


@dataclass
class CouchResponse:
    """A fully read CouchDB answer.

    Attributes:
        status: HTTP status.
        headers: Response headers.
        body: Decoded JSON body (``None`` when empty).
        raw: The body as received, when it is that JSON (relayed as is, not re-encoded).
        spilled: A successful answer's body when it outgrew the ``spill_over`` the
            request gave (``body`` and ``raw`` are then ``None``): relay or abort it.
    """

    status: int
    headers: Headers
    body: Any
    raw: bytes | None = None
    spilled: SpilledBody | None = None

    def header(self, name: str) -> str | None:
        """The first value of a response header, or ``None``."""
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None


def _decode_json(raw: bytes, status: int) -> Any:
    """Decode a CouchDB answer; a body that is not JSON is CouchDB's fault, never data.

    Raises:
        UpstreamServerError: A successful status with a body that is not JSON.
    """
    if not raw:
        return None
    try:
        return deep_json.loads(raw)
    except NestedTooDeep as exc:
        raise UpstreamServerError(f"CouchDB's answer is {exc}, more than the gateway reads",
                                  error="too_deep") from None
    except ValueError:
        reason = f"CouchDB answered HTTP {status} with a body that is not JSON"
        if status < 400:
            raise UpstreamServerError(reason, error="bad_response") from None
        # Built into the error for this status; upstream bytes are not echoed.
        return {"error": "bad_response", "reason": reason}


class _BodyStream(Protocol):
    """Writes a response body into ``write`` as it arrives.

    :attr:`finished` fires with the byte count (see :func:`body_complete`), or fails with
    the reason the body broke off. ``consumer``, when given, gets the body as its
    streaming producer: pausing it stops the reading and the idle clock. A ``write``
    that raises stops the transfer.
    """

    def __init__(self, write: Callable[[bytes], Any], consumer: Any = None) -> None:
        self._write = write
        self._consumer = consumer
        self.idle: IdleTimeout | None = None
        self.received = 0
        self.finished: Deferred[int] = Deferred(self._cancel)

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        if self._consumer is not None:
            self._consumer.registerProducer(PausingProducer(self.transport, self.idle), True)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.idle is not None:
            self.idle.touch()
        self.received += len(data)
        try:
            self._write(data)
        except Exception:
            # The sink failed (a full disk): stop the transfer, report its error.
            self.finished.errback()
            self._cancel(self.finished)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self.idle is not None:
            self.idle.stop()
        if self._consumer is not None:
            self._consumer.unregisterProducer()
        if self.finished.called:  # cancelled (a timeout) or failed: the transfer was stopped
            return
        if body_complete(reason):
            self.finished.callback(self.received)
        else:
            self.finished.errback(reason)

    def _cancel(self, _: Deferred[int]) -> None:
        # Stop the transfer: the connection is closed, never returned to the pool half read.
        transport: Any = self.transport  # the response body's IPushProducer
        if transport is not None:
            transport.stopProducing()


def abort_connection(transport: Any) -> None:
    """Cut the connection a response body arrives on, at once.

    Args:
        transport: What Twisted gave the body's protocol (a ``TransportProxyProducer``);
            the TCP transport behind it can abort even when the peer never answers.
    """
    producer = getattr(transport, "_producer", None)
    abort = getattr(producer, "abortConnection", None) or getattr(
        transport, "abortConnection", None
    )
    if callable(abort):
        abort()
    elif transport is not None:
        transport.stopProducing()


class _Abandoned(Protocol):
    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        abort_connection(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        pass  # the abort's own failure: expected


def abandon(response: IResponse) -> None:
    """Drop a response whose body nobody will read (see :meth:`CouchTransport.open_stream`).

    Its connection is cut rather than read to the end: an attachment may be gigabytes.
    """
    response.deliverBody(_Abandoned())  # type: ignore[no-untyped-call]


def idle_timeout(
    clock: IReactorTime | None, seconds: float | None, expire: Callable[[], None]
) -> IdleTimeout | None:
    """An :class:`IdleTimeout`, or ``None`` when there is no clock or no limit."""
    if clock is None or seconds is None:
        return None
    return IdleTimeout(clock, seconds, expire)


async def stream_body(
    response: IResponse,
    write: Callable[[bytes], Any],
    *,
    consumer: Any = None,
    clock: IReactorTime | None = None,
    timeout: float | None = None,
) -> int:
    """Deliver a response body chunk by chunk to ``write``; the number of bytes.

    Args:
        response: A response whose body has not been read.
        write: Called with each chunk.
        consumer: An ``IConsumer`` to register the body with as its streaming producer.
        clock: With ``timeout``: the clock of the idle timeout.
        timeout: Seconds the body may stop arriving (while ``consumer`` is not pausing
            it) before :class:`CouchTimeout`; the transfer is then stopped. ``None``: no
            limit.

    Raises:
        CouchTimeout: The body stopped arriving for ``timeout`` seconds.
        Exception: What broke the body off (Twisted's reason), or what ``write`` raised.
    """
    stream = _BodyStream(write, consumer)
    stream.idle = idle = idle_timeout(clock, timeout, stream.finished.cancel)
    response.deliverBody(stream)  # type: ignore[no-untyped-call]
    try:
        return await stream.finished
    except CancelledError:
        if idle is not None and idle.expired:
            raise CouchTimeout(
                f"CouchDB sent nothing for {idle.seconds:g} s in the middle of its answer"
            ) from None
        raise
    finally:
        if idle is not None:
            idle.stop()


async def read_body(
    response: IResponse,
    *,
    clock: IReactorTime | None = None,
    timeout: float | None = None,
    progress: IdleTimeout | None = None,
) -> bytes:
    """Read a (small) response body completely, mapping connection loss.

    Args:
        response: A response whose body has not been read.
        clock: With ``timeout``: the clock of the idle timeout.
        timeout: Seconds the body may stop arriving before :class:`CouchTimeout` (the
            transfer is then stopped); ``None``: no limit.
        progress: An idle timeout of the whole request that every chunk pushes back.
    """
    parts: list[bytes] = []
    write: Callable[[bytes], Any] = parts.append
    if progress is not None:
        touch = progress.touch

        def write(chunk: bytes) -> None:
            parts.append(chunk)
            touch()

    await _lost_is_unreachable(stream_body(response, write, clock=clock, timeout=timeout))
    return b"".join(parts)


async def _lost_is_unreachable(reading: Awaitable[T]) -> T:
    """Await the reading of an answer; a lost connection is CouchDB unreachable."""
    try:
        return await reading
    except _UNREACHABLE_ERRORS as exc:
        translated = _unreachable(exc)
        if isinstance(translated, CouchUnreachable):
            translated = CouchUnreachable("connection to CouchDB lost while reading its answer")
        raise translated from exc


@dataclass
class CouchTransport:
    """HTTP access to one CouchDB server as one identity.

    Args:
        url: The server URL; ``user:password@`` in it become Basic credentials when
            ``auth`` is not given (and are removed from the URL).
        reactor: The reactor (TCP and clock).
        pool: A shared connection pool; a persistent one is created when omitted.
        auth: How requests authenticate; anonymous by default.
        timeout: Seconds a request may take before :class:`CouchTimeout` (``None``: no limit).
    """

    url: str
    reactor: Reactor
    pool: webclient.HTTPConnectionPool | None = None
    auth: Auth | None = None
    timeout: float | None = 30.0
    base_url: str = field(init=False)
    _agent: webclient.Agent = field(init=False, repr=False)
    _base: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        base, username, password = split_credentials(self.url)
        self.base_url = base
        self.url = base
        if self.auth is None:
            self.auth = (
                BasicAuth(username, password or "") if username is not None else NoAuth()
            )
        if self.pool is None:
            self.pool = connection_pool(self.reactor)
        self._agent = _agent_for(self.reactor, self.pool)
        self._base = base.rstrip("/").encode("ascii")

    def with_auth(self, auth: Auth) -> CouchTransport:
        """A transport for another identity sharing this one's pool and settings."""
        return CouchTransport(
            self.base_url, self.reactor, pool=self.pool, auth=auth, timeout=self.timeout
        )

    def url_for(self, segments: Sequence[str], params: Any = None) -> str:
        """The full URL of a path (raw segments) and query parameters."""
        return join_url(self.base_url, segments, encode_query(params))

    def _url(self, segments: Sequence[str], params: Any) -> bytes:
        return self._base + path_bytes(segments, encode_query(params) if params else "")

    async def _request(
        self, method: bytes, url: bytes, headers: Headers, body: IBodyProducer | None
    ) -> IResponse:
        """``Agent.request``, where being cancelled always ends in ``CancelledError``.

        Cancelled while it still resolves the host name, Twisted's ``HostnameEndpoint``
        fails with ``DNSLookupError`` instead, which would read as CouchDB unreachable
        (and be logged as an error for a client that merely left).
        """
        cancelled = False
        started: Deferred[IResponse] = self._agent.request(method, url, headers, body)

        def cancel(_: Deferred[IResponse]) -> None:
            nonlocal cancelled
            cancelled = True
            started.cancel()

        relayed: Deferred[IResponse] = Deferred(cancel)
        started.chainDeferred(relayed)
        try:
            return await relayed
        except Exception as exc:
            if cancelled and not isinstance(exc, CancelledError):
                raise CancelledError() from exc
            raise

    async def _with_timeout(
        self, start: Callable[[IdleTimeout | None], Awaitable[T]], timeout: float | None
    ) -> T:
        """Run ``start(idle)``; cancel it once nothing moved for ``timeout`` seconds.

        Nothing moves while waiting for an answer, so for most requests this is a plain
        deadline; a request body pushes it back with every chunk it writes
        (:class:`~gateway.couch.idle.ProgressBody`), and an answer's body with every chunk
        it brings, so a long upload, a long answer or a ``_changes`` read kept alive by
        heartbeat lines lives while it moves.
        """
        holder: list[Deferred[T]] = []
        idle = idle_timeout(self.reactor, timeout, lambda: holder[0].cancel())
        deferred: Deferred[T] = Deferred.fromCoroutine(start(idle))  # type: ignore[arg-type]
        holder.append(deferred)
        try:
            return await deferred
        except CancelledError as exc:
            if idle is not None and idle.expired:
                # Cut while connecting (a connect or a TLS handshake that hangs): nothing
                # was sent, which the cause tells unsure_of_write.
                unsent = exc.__cause__ if isinstance(exc.__cause__, _NOT_SENT) else None
                raise CouchTimeout(f"CouchDB did not answer within {timeout:g} s") from unsent
            raise
        finally:
            if idle is not None:
                idle.stop()

    async def send(
        self,
        method: str,
        segments: Sequence[str],
        *,
        params: Any = None,
        json: Any = _NO_BODY,
        data: bytes | IBodyProducer | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        timeout: float | object | None = _NO_BODY,
        raise_for_status: bool = True,
        spill_over: int | None = None,
    ) -> CouchResponse:
        """Send a request and read its JSON answer.

        Args:
            method: HTTP method.
            segments: Raw path segments (encoded here).
            params: Query parameters (see :func:`~gateway.couch.urls.encode_query`).
            json: A JSON-serialisable body (sent with ``Content-Type: application/json``).
            data: A raw body: bytes or a body producer.
            headers: Extra request headers (bytes values go as they are).
            timeout: Override of the transport's timeout.
            raise_for_status: Raise a :class:`CouchError` for 4xx/5xx answers.
            spill_over: Most bytes of a successful answer to read whole; a longer one
                is neither read nor decoded but returned as :attr:`CouchResponse.spilled`
                (see :mod:`gateway.couch.spill`). ``None``: always read whole.

        Returns:
            The answer.

        Raises:
            CouchError: CouchDB answered with an error status.
            CouchUnreachable: CouchDB could not be reached.
            CouchTimeout: CouchDB did not answer in time.
        """
        url = self._url(segments, params)
        verb = method.encode("ascii")
        limit = self.timeout if timeout is _NO_BODY else timeout
        assert limit is None or isinstance(limit, (int, float))
        replayable = not (data is not None and not isinstance(data, bytes))
        auth = self.auth
        assert auth is not None
        content: bytes | IBodyProducer | None = data
        if json is not _NO_BODY:
            content = deep_json.dumps(json, separators=(",", ":")).encode("utf-8")

        async def attempt(idle: IdleTimeout | None) -> CouchResponse:
            raw_headers = Headers(_ACCEPT_JSON)
            for name, value in (headers or {}).items():
                raw_headers.setRawHeaders(name, [value])
            for name, value in (await auth.headers()).items():
                raw_headers.setRawHeaders(name, [value])
            if json is not _NO_BODY:
                raw_headers.setRawHeaders(b"content-type", _JSON_TYPE)
            body: IBodyProducer | None = (
                BytesBody(content) if isinstance(content, bytes) else _progress(content, idle)
            )
            try:
                response = await self._request(verb, url, raw_headers, body)
            except _UNREACHABLE_ERRORS as exc:
                raise _unreachable(exc) from exc
            auth.observe(_set_cookies(response))
            if spill_over is not None and 200 <= response.code < 300:
                kept = await _lost_is_unreachable(
                    read_or_spill(response, spill_over, progress=idle)
                )
                if isinstance(kept, SpilledBody):
                    return CouchResponse(response.code, response.headers, None, spilled=kept)
                raw = kept
            else:
                raw = await read_body(response, progress=idle)
            parsed = _decode_json(raw, response.code)
            return CouchResponse(response.code, response.headers, parsed,
                                 raw if raw and response.code < 400 else None)

        async def exchange() -> CouchResponse:
            answer = await self._with_timeout(attempt, limit)
            # A 401 drops the refused session whether or not this request can be sent
            # again (a streamed body cannot): the next request logs in afresh.
            if answer.status == 401 and await auth.renew() and replayable:
                answer = await self._with_timeout(attempt, limit)
            return answer

        answer = await _as_write_outcome(exchange(), method, segments)
        if raise_for_status and answer.status >= 400:
            raise CouchError.from_response(answer.status, answer.body)
        return answer

    async def request(self, method: str, segments: Sequence[str], **kwargs: Any) -> Any:
        """Like :meth:`send`, returning only the decoded JSON body."""
        return (await self.send(method, segments, **kwargs)).body

    async def open_stream(
        self,
        method: str,
        segments: Sequence[str],
        *,
        params: Any = None,
        body: IBodyProducer | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        timeout: float | object | None = _NO_BODY,
        raise_for_status: bool = True,
    ) -> IResponse:
        """Start a request and return the response as soon as its headers arrive.

        The body is not read: the caller streams it with ``response.deliverBody`` (and
        must read or abort it, e.g. with :func:`read_body` and an idle timeout). Nothing
        asks for compression, so bytes arrive as stored. The timeout covers the wait for
        the response headers, pushed back by every chunk of a request ``body``. A 401
        to a request without a body renews a session and is asked again once.

        Raises:
            CouchError: For an error status (its small body is read to build the error).
            CouchUnreachable: CouchDB could not be reached.
            CouchTimeout: No response headers in time.
        """
        url = self._url(segments, params)
        limit = self.timeout if timeout is _NO_BODY else timeout
        assert limit is None or isinstance(limit, (int, float))
        auth = self.auth
        assert auth is not None

        async def attempt(idle: IdleTimeout | None) -> IResponse:
            raw_headers = Headers()
            for name, value in [*(headers or {}).items(), *(await auth.headers()).items()]:
                raw_headers.setRawHeaders(name, [value])
            try:
                response: IResponse = await self._request(
                    method.encode("ascii"), url, raw_headers, _progress(body, idle)
                )
            except _UNREACHABLE_ERRORS as exc:
                raise _unreachable(exc) from exc
            auth.observe(_set_cookies(response))
            return response

        async def exchange() -> IResponse:
            response = await self._with_timeout(attempt, limit)
            if response.code == 401 and await auth.renew() and body is None:
                await read_body(response, clock=self.reactor, timeout=limit)
                response = await self._with_timeout(attempt, limit)
            return response

        response = await _as_write_outcome(exchange(), method, segments)
        if raise_for_status and response.code >= 400:
            raw = await read_body(response, clock=self.reactor, timeout=limit)
            raise CouchError.from_response(response.code, _decode_json(raw, response.code))
        return response

    async def login(self, username: str, password: str) -> str:
        """Log in with ``POST /_session`` and return the ``AuthSession`` cookie value.

        Raises:
            Unauthorized: The name or password is wrong.
        """
        plain = CouchTransport(
            self.base_url, self.reactor, pool=self.pool, auth=NoAuth(), timeout=self.timeout
        )
        answer = await plain.send(
            "POST", ["_session"], json={"name": username, "password": password}
        )
        cookie = session_cookie_from_headers(_set_cookies_from(answer.headers))
        if not cookie:
            raise Unauthorized("CouchDB did not issue a session cookie", error="unauthorized")
        return cookie


def _set_cookies_from(headers: Headers) -> list[str]:
    return [v.decode("latin-1") for v in headers.getRawHeaders(b"set-cookie", [])]


def _set_cookies(response: IResponse) -> list[str]:
    return _set_cookies_from(response.headers)
