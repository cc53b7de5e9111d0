"""What the connections of the live-changes endpoint share: the factory that builds them.

:class:`ChangesServerFactory` builds :class:`~gateway.ws.server.ChangesServerProtocol`
connections sharing one :class:`~gateway.ws.hub.FeedHub`, the settings, the metrics,
the per-user feed counts, one upstream transport per credential and the access
re-checks and subscribe authorizations per (credential, database).
:class:`~gateway.ws.service.ChangesService` owns both and closes every socket with code
1001 (after a ``closing`` message with resume seqs) on shutdown; the factory can also
listen on its own port (as the tests do).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from gateway.config import Settings
from gateway.http.channel import SERVER_NAME
from gateway.ws.access import AccessRechecks, AuthorizationCache, Reverify, SharedIdentities
from gateway.ws.handshake import Authenticate
from gateway.ws.hub import FeedHub, FeedKey
from gateway.ws.metrics import WsMetrics
from gateway.ws.protocol import FeedParams
from gateway.ws.server import CLOSE_HANDSHAKE_SECONDS, ChangesServerProtocol
from gateway.ws.tasks import hold_task

__all__ = ["AUTHORIZATION_TTL", "ChangesServerFactory"]

#: Seconds a successful subscribe authorization of a (credential, database) is reused.
AUTHORIZATION_TTL = 5.0


class ChangesServerFactory(WebSocketServerFactory):  # type: ignore[misc,unused-ignore]
    """Builds connections sharing one hub, settings and metrics.

    Args:
        hub: The feed hub.
        settings: Gateway settings (``ws_*``, ``cors_origins``).
        authenticate: Verifies handshake credentials (see
            :data:`~gateway.ws.handshake.Authenticate`).
        clock: The reactor's clock (keep-alive, re-checks, lag).
        url: The public ``ws://`` URL (only used in Autobahn's handshake checks).
        socket_send_buffer: ``SO_SNDBUF`` for accepted sockets (``None``: the OS default);
            bounds the kernel memory a client that does not read can pin.
        reverify: Verifies a connection's credential again at the access re-checks,
            when its upstream identity is not that credential (``auth_mode=proxy``).
    """

    protocol = ChangesServerProtocol  # type: ignore[assignment,unused-ignore]

    def __init__(
        self,
        hub: FeedHub,
        settings: Settings,
        authenticate: Authenticate,
        clock: IReactorTime,
        *,
        url: str | None = None,
        socket_send_buffer: int | None = None,
        metrics: WsMetrics | None = None,
        reverify: Reverify | None = None,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call,unused-ignore]
            url, reactor=clock, server=SERVER_NAME.decode("ascii"))
        self.hub = hub
        self.settings = settings
        self.authenticate = authenticate
        self.clock = clock
        self.socket_send_buffer = socket_send_buffer
        self.metrics = metrics or WsMetrics()
        self.connections: set[ChangesServerProtocol] = set()
        #: Per user (by name; per credential for anonymous callers), over all their
        #: connections: the subscriptions on each distinct feed key (the hub's: database,
        #: options and design document revision). One user must not open the upstream
        #: feeds of many; any number of subscriptions may share a feed.
        self.user_feeds: dict[str, Counter[FeedKey]] = {}
        #: One upstream transport per credential, shared by its connections.
        self.identities = SharedIdentities(hub.transport)
        #: Subscribe authorizations (``GET /db`` as the user) per (credential, database),
        #: reused for a few seconds, never longer than the re-check interval, and
        #: forgotten with the re-checks of the pair (no subscription of it left).
        ttl = AUTHORIZATION_TTL
        if settings.ws_auth_recheck > 0:
            ttl = min(ttl, settings.ws_auth_recheck)
        self.authorizations = AuthorizationCache(clock, ttl)
        #: Access re-checks per (credential, database) pair.
        self.rechecks = AccessRechecks(clock, settings.ws_auth_recheck,
                                       on_revoked=self.authorizations.invalidate,
                                       on_forgotten=self.authorizations.invalidate,
                                       reverify=reverify)
        #: False once shutting down: new handshakes are refused with 503.
        self.accepting = True
        #: The HTTP request whose socket ``UpgradingResource`` is handing over, meanwhile.
        self.upgrading: Any = None
        self._tasks: set[Deferred[Any]] = set()
        self.setProtocolOptions(  # type: ignore[no-untyped-call,unused-ignore]
            maxMessagePayloadSize=settings.ws_max_message_bytes,
            maxFramePayloadSize=settings.ws_max_message_bytes,
            autoPingInterval=settings.ws_ping_interval or 0,
            autoPingTimeout=max(1.0, min(settings.ws_ping_interval or 10.0, 30.0)),
            closeHandshakeTimeout=CLOSE_HANDSHAKE_SECONDS,
            failByDrop=False,
            openHandshakeTimeout=30,
            versions=[13],  # RFC 6455 only (Autobahn also speaks draft 10's version 8)
        )

    def user_feeds_full(self, owner: str, db: str, params: FeedParams) -> bool:
        """Whether following ``(db, params)`` would take ``owner`` past ``ws_max_user_feeds``.

        A feed the user follows already costs nothing more. The options of a design
        filter not authorised yet (no ``design_rev``) stand for every revision of them:
        the check before the authorisation refuses only what the one after it would.

        Args:
            owner: Whose subscription it is (see ``user_feeds``).
            db: The database.
            params: The subscription's options.
        """
        feeds = self.user_feeds.get(owner)
        if not feeds or len(feeds) < self.settings.ws_max_user_feeds or (db, params) in feeds:
            return False
        if params.design_doc is None or params.design_rev is not None:
            return True
        return not any(held_db == db and held.at_revision(None) == params
                       for held_db, held in feeds)

    def hold_user_feed(self, owner: str, key: FeedKey) -> None:
        """One more subscription of ``owner`` on the feed ``key`` (see ``user_feeds``)."""
        self.user_feeds.setdefault(owner, Counter())[key] += 1

    def forget_user_feed(self, owner: str, key: FeedKey) -> None:
        """One subscription of ``owner`` on the feed ``key`` no longer counts.

        A lost connection's subscription counts until its feed stops lingering for it
        (see ``FeedHub.release``): the feed is still open upstream meanwhile.

        Args:
            owner: Whose it was (see ``user_feeds``).
            key: Its feed key, as held (:meth:`hold_user_feed`).
        """
        feeds = self.user_feeds.get(owner)
        if feeds is None:
            return
        feeds[key] -= 1
        if feeds[key] <= 0:
            del feeds[key]
        if not feeds:
            del self.user_feeds[owner]

    def track(self, deferred: Deferred[Any]) -> None:
        """Keep a background task until it ends (awaited at shutdown)."""
        hold_task(self._tasks, deferred)

    async def drain_tasks(self) -> None:
        """Wait for background tasks (feed releases) to finish."""
        while self._tasks:
            await DeferredList(list(self._tasks), consumeErrors=True)
