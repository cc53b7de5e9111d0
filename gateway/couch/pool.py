"""The persistent connection pool the client (and the gateway) use for CouchDB."""

from __future__ import annotations

from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

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


class CouchConnectionPool(HTTPConnectionPool):
    """Twisted's pool, with what its ``https://`` connections trust.

    Attributes:
        tls_trust_root: The only roots to trust (``WALLABY_COUCHDB_CA_FILE``), or
            ``None`` for the system's.
    """

    tls_trust_root: IOpenSSLTrustRoot | None = None


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
