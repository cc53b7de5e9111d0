"""The upstream feed a :class:`~gateway.ws.hub.FeedHub` shares: interface and adapters.

The hub needs one thing from a feed: a ``Service`` that follows a database's
``_changes`` from a given seq, calls ``on_changes(rows, last_seq)`` in order without
loss or duplicates across reconnects, and reports its state (``connecting``, ``live``,
``interrupted``, ``stopped``) through ``on_state(state, detail)``.
:func:`default_feed_factory` builds a :class:`LongPollFeed` for now; the continuous
``gateway.couch.changes.feed.ChangesFeed`` (heartbeat dead-connection detection) can be
passed as ``feed_factory`` (same constructor shape) once it exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from gateway.couch.transport import CouchTransport
from gateway.errors import CouchError, CouchUnreachable

__all__ = ["FeedFactory", "LongPollFeed", "OnChanges", "OnError", "OnState",
           "UpstreamFeed", "default_feed_factory"]

OnChanges = Callable[[list[dict[str, Any]], Any], None]
OnState = Callable[[str, Any], None]
OnError = Callable[[BaseException], None]


class UpstreamFeed(Protocol):
    """What the hub uses of a feed (a Twisted ``Service``)."""

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Start following the feed."""

    def stopService(self) -> Deferred[None] | None:  # noqa: N802 - Twisted's name
        """Stop; the Deferred fires once the connection is closed."""


class FeedFactory(Protocol):
    """Builds one upstream feed."""

    def __call__(
        self,
        transport: CouchTransport,
        db_name: str,
        options: Mapping[str, Any],
        *,
        since: Any,
        on_changes: OnChanges,
        on_state: OnState,
        on_error: OnError,
        clock: IReactorTime,
        heartbeat_ms: int,
    ) -> UpstreamFeed:
        """Create (not start) a feed."""
        ...


_BODY_KEYS = ("doc_ids", "selector")


class LongPollFeed(Service):
    """A simple, robust feed on ``feed=longpoll`` requests (the fallback adapter).

    Each request asks for the changes after the last seq delivered, so a reconnect
    neither loses nor repeats a change. Failures are retried with exponential backoff.

    Args:
        transport: The identity the feed reads as (the gateway's service identity).
        db_name: The database.
        options: ``_changes`` parameters; ``doc_ids``/``selector`` go in a POST body.
        since: The seq to start after.
        on_changes: Receives each non-empty batch and its ``last_seq``.
        on_state: Receives state transitions.
        on_error: Receives a failure that is not a transient transport fault.
        clock: The reactor's clock.
        heartbeat_ms: How long one poll may wait for a change.
    """

    max_backoff = 5.0

    def __init__(
        self,
        transport: CouchTransport,
        db_name: str,
        options: Mapping[str, Any],
        *,
        since: Any,
        on_changes: OnChanges,
        on_state: OnState,
        on_error: OnError,
        clock: IReactorTime,
        heartbeat_ms: int = 10_000,
    ) -> None:
        self._transport = transport
        self._db = db_name
        self._params = {k: v for k, v in options.items() if k not in _BODY_KEYS}
        body = {k: v for k, v in options.items() if k in _BODY_KEYS}
        self._body = body or None
        self.since = since
        self._on_changes = on_changes
        self._on_state = on_state
        self._on_error = on_error
        self._clock = clock
        self._poll_ms = max(1000, heartbeat_ms)
        self.state = "stopped"
        self._loop: Deferred[None] | None = None
        self._waiting: Deferred[Any] | None = None

    def _set_state(self, state: str, detail: Any = None) -> None:
        if state != self.state:
            self.state = state
            self._on_state(state, detail)

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Start polling."""
        super().startService()  # type: ignore[no-untyped-call,unused-ignore]
        self._set_state("connecting")
        self._loop = Deferred.fromCoroutine(self._run())

    def stopService(self) -> Deferred[None] | None:  # noqa: N802 - Twisted's name
        """Stop polling; fires once the pending request is gone."""
        super().stopService()  # type: ignore[no-untyped-call,unused-ignore]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
        if self._loop is not None:
            loop, self._loop = self._loop, None
            await loop
        self._set_state("stopped")

    async def _wait(self, deferred: Deferred[Any]) -> Any:
        self._waiting = deferred
        try:
            return await deferred
        finally:
            self._waiting = None

    async def _poll(self) -> dict[str, Any]:
        params = dict(self._params, feed="longpoll", since=self.since, timeout=self._poll_ms)
        timeout = self._poll_ms / 1000 + 30
        if self._body is not None:
            answer = await self._transport.send(
                "POST", [self._db, "_changes"], params=params, json=self._body, timeout=timeout
            )
        else:
            answer = await self._transport.send(
                "GET", [self._db, "_changes"], params=params, timeout=timeout
            )
        body: dict[str, Any] = answer.body
        return body

    async def _run(self) -> None:
        backoff = 0.1
        while self.running:
            try:
                body = await self._wait(Deferred.fromCoroutine(self._poll()))
            except CancelledError:
                return
            except (CouchUnreachable, CouchError) as exc:
                if not self.running:
                    return
                if not isinstance(exc, CouchUnreachable) and exc.status < 500:
                    self._on_error(exc)
                self._set_state("interrupted", exc)
                try:
                    await self._wait(deferLater(self._clock, backoff, lambda: None))
                except CancelledError:
                    return
                backoff = min(self.max_backoff, backoff * 2)
                continue
            backoff = 0.1
            self._set_state("live")
            rows = body.get("results") or []
            last_seq = body.get("last_seq", self.since)
            self.since = last_seq
            if rows and self.running:
                self._on_changes(rows, last_seq)


def default_feed_factory(
    transport: CouchTransport,
    db_name: str,
    options: Mapping[str, Any],
    *,
    since: Any,
    on_changes: OnChanges,
    on_state: OnState,
    on_error: OnError,
    clock: IReactorTime,
    heartbeat_ms: int = 10_000,
) -> UpstreamFeed:
    """Build the shared feed: :class:`LongPollFeed` (see module docs)."""
    return LongPollFeed(
        transport, db_name, options, since=since, on_changes=on_changes,
        on_state=on_state, on_error=on_error, clock=clock, heartbeat_ms=heartbeat_ms,
    )
