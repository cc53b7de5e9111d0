"""The persistent connection pool the client (and the gateway) use for CouchDB."""

from __future__ import annotations

from typing import Any

from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web._newclient import RequestNotSent
from twisted.web.client import (
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    _RetryingHTTP11ClientProtocol,
)

__all__ = ["IDLE_TIMEOUT", "CouchConnectionPool", "connection_pool"]

#: Seconds an idle pooled connection is kept. Servers close idle keep-alive connections
#: on their own schedule (Node's default, hence pouchdb-server's, is 5 s); a request
#: sent on a connection the server is closing fails before any answer, and Twisted
#: replays only body-less idempotent requests. Dropping idle connections first avoids
#: that race instead of replaying writes.
IDLE_TIMEOUT = 4


class _QuietFactory(_HTTP11ClientFactory):
    """Twisted's factory of pooled connections, without its start and stop log lines.

    One "Starting factory" / "Stopping factory" pair per upstream connection was half
    the gateway's log under load.
    """

    noisy = False


class _RetryingReadsOnly(_RetryingHTTP11ClientProtocol):
    """Twisted's retry of a request that failed on a reused connection, for reads only.

    Twisted also sends a failed ``DELETE`` again on a new connection: one that CouchDB
    applied but whose answer was lost then looked failed (a 409 from the repeat, or the
    repeat's own error), never "may have been applied". A request certainly not sent
    (``RequestNotSent``) is still retried, whatever its method.
    """

    def _shouldRetry(self, method: bytes, exception: Any, bodyProducer: Any) -> bool:  # noqa: N802, N803
        if method not in (b"GET", b"HEAD", b"OPTIONS") and not isinstance(
                exception, RequestNotSent):
            return False
        return bool(super()._shouldRetry(  # type: ignore[no-untyped-call]
            method, exception, bodyProducer))


class CouchConnectionPool(HTTPConnectionPool):
    """Twisted's pool, with what its ``https://`` connections trust; writes never replayed.

    Attributes:
        tls_trust_root: The only roots to trust (``WALLABY_COUCHDB_CA_FILE``), or
            ``None`` for the system's.
    """

    tls_trust_root: IOpenSSLTrustRoot | None = None

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:  # noqa: N802
        """A pooled or new connection; a pooled one retries only reads (see above)."""
        def reads_only(connection: Any) -> Any:
            if type(connection) is _RetryingHTTP11ClientProtocol:
                connection.__class__ = _RetryingReadsOnly
            return connection

        connecting: Deferred[Any] = super().getConnection(key, endpoint)
        return connecting.addCallback(reads_only)


def connection_pool(
    reactor: IReactorTime, *, max_per_host: int = 16, idle_timeout: int = IDLE_TIMEOUT,
    tls_trust_root: IOpenSSLTrustRoot | None = None,
) -> CouchConnectionPool:
    """A persistent pool sized and timed for CouchDB.

    Args:
        reactor: The reactor.
        max_per_host: Idle connections kept per host (busy ones are not limited).
        idle_timeout: Seconds before an idle connection is closed by us.
        tls_trust_root: For ``https://``: the only roots to trust (``None``: the
            system's, e.g. ``/etc/ssl/certs``).
    """
    pool = CouchConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    pool.tls_trust_root = tls_trust_root
    pool.maxPersistentPerHost = max_per_host
    pool.cachedConnectionTimeout = idle_timeout
    pool._factory = _QuietFactory
    return pool
