"""The ``/ready`` verdict: whether CouchDB takes the service identity, logged when it changes."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from gateway.couch import CouchServer
from gateway.errors import (
    CouchError,
    CouchUnreachable,
    Forbidden,
    GatewayError,
    ServiceRefused,
    Unauthorized,
)
from gateway.http.upstream_timing import TimedCall

__all__ = ["Readiness"]

_log = Logger(namespace="gateway.http")


class Readiness:
    """Asks CouchDB whether it is ready, and remembers the last verdict.

    Args:
        couch: The upstream server, with the service's credentials.
        timed: Awaits the upstream call and records its latency.
    """

    def __init__(self, couch: CouchServer, timed: TimedCall) -> None:
        self.couch = couch
        self._timed = timed
        self._problem: str | None = None  # the last verdict's problem

    async def check(self, request: Any) -> None:
        """Raise unless CouchDB is up and takes the service identity (``/_up`` where it has one).

        A change of verdict is logged once (probes ask every few seconds), so an operator
        sees why the load balancer took the gateway out.

        Args:
            request: The probe's request (its route labels the upstream latency).

        Raises:
            ServiceRefused: CouchDB refuses the service identity.
            CouchUnreachable: CouchDB cannot be reached, or is not ready.
        """
        try:
            await self._timed(request, self.couch.ready())
        except (Unauthorized, Forbidden) as exc:
            problem: GatewayError = ServiceRefused(
                f"CouchDB refused the gateway's service identity ({exc.status} {exc.error}): "
                "check COUCHDB_USER and COUCHDB_PASSWORD (or the credentials in COUCHDB_URL)"
            )
        except CouchUnreachable as exc:
            problem = exc
        except CouchError as exc:
            problem = CouchUnreachable(f"CouchDB is not ready: {exc.status} {exc.reason}")
        else:
            self._changed(None)
            return
        self._changed(problem)
        raise problem

    def _changed(self, problem: GatewayError | None) -> None:
        verdict = None if problem is None else f"{problem.error}: {problem.reason}"
        if verdict == self._problem:
            return
        self._problem = verdict
        if problem is None:
            _log.info("ready: CouchDB takes requests again")
        else:
            _log.warn("not ready: {verdict}", verdict=verdict)
