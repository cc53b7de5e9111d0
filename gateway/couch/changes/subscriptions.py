"""``ChangeSubscriptions``: the original Wallaby ``changes``/``unchanges`` API on shared feeds.

Every ``subscribe(cb, since, **options)`` adds ``cb`` to the *registration* keyed by
``(since, options)`` (after normalisation), as in the original Wallaby: ``unsubscribe``
with the same arguments removes the registration with all its callbacks (or only ``cb``
when given). Every registered callback is called as ``cb(rows, viewID=None)``, where
``viewID`` is the view (``"ddoc/vname"``) of a ``filter="_view"`` registration.

Sharing. Options are normalised (``None`` values and defaults dropped, booleans made
booleans, ``doc_ids`` sorted and deduplicated, the implied ``filter`` of ``doc_ids``,
``selector`` and ``view`` filled in), so equal requests share one
:class:`~gateway.couch.changes.feed.ChangesFeed`:

* a registration with ``since="now"`` joins a running feed with equal options that
  itself started at ``"now"`` (it gets every change from now on) or starts one. It
  never joins a feed that started at ``0`` or a seq: that one may still be replaying
  history, and seqs are opaque, so there is no telling when it has caught up. "Now"
  is where the running feed is: if that feed is behind CouchDB (a connection stalled
  and not yet found dead, or held back by a slow callback), the joiner also gets the
  changes between the feed's position and the moment it joined, never fewer;
* a callback with an explicit ``since`` (``0`` or a seq) starts its own feed from that
  point, so it gets exactly the changes after its ``since`` — once each, in order. It
  joins a running feed only if that feed has the same ``since`` and options and has not
  moved yet. It cannot join a feed that has moved on: seqs are opaque, so there is no
  way to tell where a catch-up from its ``since`` would meet the running feed without
  losing or repeating changes.

A feed closes when its last registration goes. A callback that raises is logged and the
feed goes on; a callback that returns a Deferred pauses its feed until it fires. A feed
that stops for good (the database was deleted, access was revoked, the filter does not
exist) is logged and dropped with its registrations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.couch._deferred import returns_deferred
from gateway.couch.changes.backoff import Backoff
from gateway.couch.changes.feed import ChangesFeed
from gateway.couch.changes.handlers import call_handler
from gateway.couch.transport import CouchTransport

__all__ = [
    "ChangeCallback",
    "ChangeSubscriptions",
    "normalize_options",
    "options_key",
]

#: ``cb(rows, viewID=None)``; may return a Deferred.
ChangeCallback = Callable[..., Any]

_BOOLEAN_OPTIONS: Final = frozenset(
    {"include_docs", "conflicts", "attachments", "att_encoding_info"}
)
_COUNT_OPTIONS: Final = frozenset({"seq_interval"})
_DROPPED: Final = frozenset({"feed", "heartbeat", "since"})
_REFUSED: Final = frozenset({"limit", "descending"})

_log = Logger(namespace="gateway.couch.changes")


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"the changes option {name!r} must be a boolean")


def _count(name: str, value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"the changes option {name!r} must be a positive whole number")


def normalize_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise ``_changes`` options so that equal requests compare equal.

    Args:
        options: What a caller passed (``filter``, ``view``, ``doc_ids``, …).

    Returns:
        The options a feed is opened with.

    Raises:
        ValueError: An option makes no sense for a continuous shared feed (``limit``,
            ``descending``, a ``feed`` other than ``continuous``) or has a wrong type.
    """
    feed = options.get("feed")
    if feed not in (None, "continuous"):
        raise ValueError("changes subscriptions are continuous feeds")
    refused = sorted(_REFUSED.intersection(k for k, v in options.items() if v is not None))
    if refused:
        raise ValueError(f"option(s) {', '.join(refused)} cannot apply to a continuous feed")
    result: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or name in _DROPPED:
            continue
        if name in _BOOLEAN_OPTIONS:
            if _boolean(name, value):
                result[name] = True
            continue
        result[name] = _count(name, value) if name in _COUNT_OPTIONS else value
    if result.get("style") == "main_only":
        del result["style"]
    if "doc_ids" in result:
        doc_ids = result["doc_ids"]
        if isinstance(doc_ids, str) or not all(isinstance(i, str) for i in doc_ids):
            raise ValueError("doc_ids must be a list of document ids")
        result["doc_ids"] = sorted(set(doc_ids))
        result.setdefault("filter", "_doc_ids")
    if "selector" in result:
        if not isinstance(result["selector"], Mapping):
            raise ValueError("selector must be a JSON object")
        result.setdefault("filter", "_selector")
    if "view" in result:
        result.setdefault("filter", "_view")
    return result


def options_key(normalized: Mapping[str, Any]) -> str:
    """A canonical text for normalised options (the key of shared feeds)."""
    return json.dumps(normalized, sort_keys=True, separators=(",", ":"), default=str)


def _since_key(since: Any) -> str:
    return json.dumps(since, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(eq=False)
class _Registration:
    view_id: str | None
    callbacks: list[ChangeCallback] = field(default_factory=list)


@dataclass(eq=False)
class _Shared:
    options_key: str
    feed: ChangesFeed
    started_now: bool
    registrations: dict[str, _Registration] = field(default_factory=dict)


class ChangeSubscriptions(MultiService):
    """The changes registrations of one database, on as few feeds as possible.

    Args:
        transport: How to reach CouchDB.
        db_name: The database.
        clock: The clock of the feeds (``transport.reactor`` by default).
        heartbeat: The feeds' heartbeat in seconds.
        backoff: Makes each feed's reconnection delays (the default ``Backoff()``).
        feed_options: Extra keyword arguments for every
            :class:`~gateway.couch.changes.feed.ChangesFeed` (e.g. ``connect_timeout``).
    """

    def __init__(
        self,
        transport: CouchTransport,
        db_name: str,
        *,
        clock: IReactorTime | None = None,
        heartbeat: float = 10.0,
        backoff: Callable[[], Backoff] = Backoff,
        feed_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.transport = transport
        self.db_name = db_name
        self._clock = clock
        self._heartbeat = heartbeat
        self._backoff = backoff
        self._feed_options = dict(feed_options or {})
        self._shared: list[_Shared] = []
        self._by_key: dict[str, list[_Shared]] = {}

    @property
    def feed_count(self) -> int:
        """How many upstream feeds (connections) are open."""
        return len(self._shared)

    @property
    def feeds(self) -> list[ChangesFeed]:
        """The open feeds (for inspection)."""
        return [shared.feed for shared in self._shared]

    @property
    def registration_count(self) -> int:
        """How many registrations (distinct ``(since, options)`` keys) exist."""
        return len(self._by_key)

    @property
    def callback_count(self) -> int:
        """How many callbacks are registered in all (on all feeds)."""
        return sum(
            len(registration.callbacks)
            for shared in self._shared
            for registration in shared.registrations.values()
        )

    @returns_deferred
    async def subscribe(self, cb: ChangeCallback, since: Any = "now", **options: Any) -> None:
        """Register ``cb(rows, viewID=None)`` for changes after ``since``.

        Args:
            cb: The callback.
            since: ``"now"``, ``0`` or an opaque seq.
            **options: ``_changes`` options (see :func:`normalize_options`).

        Returns:
            A Deferred firing once the callback's starting point is fixed (see
            :meth:`ChangesFeed.ready`); it fails, and nothing stays registered, when
            the feed cannot start (e.g. the database does not exist).
        """
        normalized = normalize_options(options)
        opts_key = options_key(normalized)
        key = _since_key(since) + " " + opts_key
        if not self.running:
            self.startService()  # type: ignore[no-untyped-call]
        shared = self._joinable(key, opts_key, since)
        if shared is None:
            shared = self._open(normalized, opts_key, since)
        registration = shared.registrations.get(key)
        if registration is None:
            view_id = normalized.get("view") if normalized.get("filter") == "_view" else None
            registration = _Registration(view_id if isinstance(view_id, str) else None)
            shared.registrations[key] = registration
            self._by_key.setdefault(key, []).append(shared)
        added = cb not in registration.callbacks
        if added:
            registration.callbacks.append(cb)
        try:
            await shared.feed.ready()
        except BaseException:
            # Cancelled (or the feed failed): the caller is told it is not registered.
            if added:
                await self.unsubscribe(since, cb, **options)
            raise

    def _joinable(self, key: str, opts_key: str, since: Any) -> _Shared | None:
        candidates = [s for s in self._shared if s.options_key == opts_key and s.feed.error is None]
        if since == "now":
            # A feed that started at "now" delivers only changes from its start on.
            live = [s for s in candidates if s.started_now]
            live.sort(key=lambda s: key not in s.registrations)
            return live[0] if live else None
        for shared in candidates:
            if key in shared.registrations and not shared.feed.advanced:
                return shared
        return None

    @returns_deferred
    async def unsubscribe(
        self, since: Any = "now", cb: ChangeCallback | None = None, **options: Any
    ) -> bool:
        """Remove the registration made with the same ``since`` and options.

        Each feed is closed when no registration is left on it.

        Args:
            since: The ``since`` of the registration.
            cb: Remove only this callback (the registration goes with its last one).
            **options: The options of the registration.

        Returns:
            A Deferred firing once the registration is gone (and its feeds closed): with
            ``True``, or ``False`` when nothing matched (unknown key, or ``cb`` not in it).
        """
        key = _since_key(since) + " " + options_key(normalize_options(options))
        removed = False
        for shared in list(self._by_key.get(key, [])):
            registration = shared.registrations[key]
            if cb is not None:
                if cb not in registration.callbacks:
                    continue
                registration.callbacks.remove(cb)
                removed = True
                if registration.callbacks:
                    continue
            removed = True
            del shared.registrations[key]
            self._by_key[key].remove(shared)
            if not shared.registrations:
                await self._close_feed(shared)
        if not self._by_key.get(key, True):
            del self._by_key[key]
        return removed

    @returns_deferred
    async def close(self) -> None:
        """Stop every feed and forget every registration."""
        self._by_key.clear()
        for shared in list(self._shared):
            shared.registrations.clear()
        await self.stopService()  # type: ignore[no-untyped-call]
        for shared in list(self._shared):
            await self._close_feed(shared)

    # -- internals -----------------------------------------------------------------

    def _open(self, normalized: dict[str, Any], opts_key: str, since: Any) -> _Shared:
        holder: list[_Shared] = []
        feed = ChangesFeed(
            self.transport,
            self.db_name,
            normalized,
            since=since,
            on_changes=lambda rows, _seq: self._deliver(holder[0], rows),
            on_error=lambda exc: self._failed(holder[0], exc),
            clock=self._clock,
            heartbeat=self._heartbeat,
            backoff=self._backoff(),
            **self._feed_options,
        )
        shared = _Shared(opts_key, feed, started_now=since == "now")
        holder.append(shared)
        self._shared.append(shared)
        feed.setServiceParent(self)  # type: ignore[no-untyped-call]
        return shared

    def _forget(self, shared: _Shared) -> None:
        for key in shared.registrations:
            holders = self._by_key.get(key, [])
            if shared in holders:
                holders.remove(shared)
            if not holders:
                self._by_key.pop(key, None)
        shared.registrations.clear()
        if shared in self._shared:
            self._shared.remove(shared)

    async def _close_feed(self, shared: _Shared) -> None:
        self._forget(shared)
        if shared.feed.parent is not None:
            shared.feed.disownServiceParent()  # type: ignore[no-untyped-call]
        await shared.feed.stopService()

    def _failed(self, shared: _Shared, exc: Exception) -> None:
        _log.warn(
            "changes feed of {db} dropped with {count} registration(s): {reason}",
            db=self.db_name,
            count=len(shared.registrations),
            reason=str(exc),
        )
        self._forget(shared)
        if shared.feed.parent is not None:
            # The feed has stopped itself; detaching only finishes the bookkeeping.
            stopped = shared.feed.disownServiceParent()  # type: ignore[no-untyped-call]
            if isinstance(stopped, Deferred):
                stopped.addErrback(
                    lambda f: _log.failure("closing a failed changes feed failed", f)
                )

    def _deliver(self, shared: _Shared, rows: list[dict[str, Any]]) -> Deferred[None] | None:
        pending: list[Deferred[Any]] = []
        for registration in list(shared.registrations.values()):
            for callback in list(registration.callbacks):
                result = self._call(callback, registration.view_id, list(rows))
                if result is not None:
                    pending.append(result)
        if not pending:
            return None
        gathered: Deferred[Any] = gatherResults(pending, consumeErrors=True)
        gathered.addErrback(lambda _: None)  # each callback's failure is logged already
        return gathered

    def _call(
        self, callback: ChangeCallback, view_id: str | None, rows: list[dict[str, Any]]
    ) -> Deferred[Any] | None:
        return call_handler(callback, rows, viewID=view_id, what="a changes callback",
                            db=self.db_name)
