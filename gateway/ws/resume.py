"""A subscription's resume as it runs: the catch-up read, then its merge with the live feed.

The rules of the join (what is a gap, a duplicate or a stale row) are
:mod:`gateway.ws.catchup`'s; here they are applied for one connection
(:class:`ResumeHost`): the catch-up's ``_changes`` pages are read as the user and
queued, the live changes buffered meanwhile are settled in order, and CouchDB is asked
about a row only it can judge.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import CouchError
from gateway.ws.catchup import PAGE_SIZE, Join, PageSizer, Verdict, fetch_changes, row_rev
from gateway.ws.hub import PreparedChange, SharedFeed
from gateway.ws.outbox import Outgoing
from gateway.ws.protocol import change_message, encode
from gateway.ws.subscription import Subscription

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from gateway.config import Settings
    from gateway.couch.transport import CouchTransport

__all__ = [
    "CATCH_UP_FIRST_DOCS",
    "ResumeFactory",
    "ResumeHost",
    "catch_up",
    "settle",
    "still_current",
]

#: Rows of a catch-up's first page with documents (their size is not known yet).
CATCH_UP_FIRST_DOCS = 4


class ResumeFactory(Protocol):
    """What a resume needs of the connection's factory."""

    @property
    def settings(self) -> Settings:
        """Gateway settings (``ws_queue_bytes``, ``feed_heartbeat_ms``)."""

    @property
    def clock(self) -> IReactorTime:
        """The reactor's clock."""

    def prepareMessage(self, payload: bytes) -> Any:  # noqa: N802 - Autobahn's name
        """Build the frame of a message once (Autobahn's prepared message)."""


class ResumeHost(Protocol):
    """The connection a subscription resumes on (``ChangesServerProtocol``)."""

    @property
    def factory(self) -> ResumeFactory:
        """The connection's factory."""

    @property
    def user_transport(self) -> CouchTransport | None:
        """The upstream transport of the connection's user."""

    @property
    def _ending(self) -> bool:
        """Whether the connection is closing (nothing more goes out)."""

    def _enqueue_run(self, sub: Subscription, items: Sequence[tuple[Hashable, Outgoing]]) -> None:
        """Enqueue ``(coalescing key, item)`` pairs, in order."""

    def _deliver(self, sub: Subscription, change: PreparedChange) -> None:
        """Send (or queue) one live change of ``sub``."""

    async def _settle(self, sub: Subscription, join: Join) -> None:
        """See :func:`settle`."""

    def _trail(self, sub: Subscription, join: Join) -> None:
        """Filter ``sub``'s live changes through ``join`` until its time is up."""

    async def _still_current(self, sub: Subscription, change: PreparedChange) -> bool:
        """See :func:`still_current`."""


async def catch_up(host: ResumeHost, sub: Subscription, feed: SharedFeed) -> None:
    """Read ``sub``'s changes since the client's seq as the user, then :func:`settle`.

    Pages are sized to the connection's send budget (:class:`~gateway.ws.catchup.PageSizer`)
    and queued as they come; the live changes of ``feed`` wait in ``sub.join`` meanwhile.

    Args:
        host: The connection.
        sub: The subscription, with its ``join`` and the ``since`` of its request.
        feed: The shared feed it is on.
    """
    transport = host.user_transport
    join = sub.join
    assert transport is not None and join is not None
    since = sub.request.since
    assert since is not None
    budget = host.factory.settings.ws_queue_bytes
    pages = PageSizer(target=min(max(budget // 2, 16 * 1024), 1024 * 1024),
                      first=CATCH_UP_FIRST_DOCS if sub.request.params.include_docs
                      else PAGE_SIZE)
    more = True
    while more:
        rows, since, more = await fetch_changes(
            transport, sub.request.db, sub.request.params, since, page_size=pages.size,
            heartbeat_ms=host.factory.settings.feed_heartbeat_ms,
        )
        if not sub.active or host._ending:
            return
        page: list[tuple[Hashable, Outgoing]] = []
        for row in rows:
            if "id" not in row or "seq" not in row:
                continue
            join.record(row["id"], row_rev(row))
            payload = encode(change_message(feed.id, row))
            item = Outgoing(host.factory.prepareMessage(payload), len(payload), sub, row["seq"])
            page.append((("c", id(sub), row["id"]), item))
        pages.record(len(page), sum(item.size for _key, item in page))
        del rows
        host._enqueue_run(sub, page)
        if sub.ended() or host._ending:
            return
    await host._settle(sub, join)  # the connection's, as for live changes


async def settle(host: ResumeHost, sub: Subscription, join: Join) -> None:
    """Deliver the live changes ``join`` holds, in order, then let live ones through.

    More changes may be buffered while a document's current revision is asked for
    (``host._still_current``, :func:`still_current`): they wait their turn. Afterwards
    the join's filter stays on for the changes that follow (``sub.trailing``) until it
    is done.

    Args:
        host: The connection.
        sub: The subscription.
        join: Its join, holding the live changes buffered meanwhile.
    """
    taken = 0
    while taken < len(join.buffer):
        change = join.buffer[taken]
        taken += 1
        join.buffer_bytes -= change.size
        verdict = join.take(change)
        if verdict is Verdict.CHECK:
            current = await host._still_current(sub, change)
            if not sub.active or host._ending or sub.join is not join:
                return  # ended (unsubscribed, refused, closed) while CouchDB answered
            if not current:
                continue
            join.passed(change.doc_id, change.rev)
        elif verdict is Verdict.SENT:
            continue
        host._deliver(sub, change)
    join.buffer, join.buffer_bytes = [], 0
    if sub.join is join:
        sub.join = None
    if not join.merged:
        join.merged = True
        join.keep_filtering(host.factory.clock.seconds())
    if join.trailing(host.factory.clock.seconds()):
        host._trail(sub, join)


async def still_current(host: ResumeHost, sub: Subscription, change: PreparedChange) -> bool:
    """Whether a change of another revision than was sent, not newer, is the winner now.

    Asked as the user, with ``_all_docs`` and the document's id (its winning revision,
    deleted or not, without its body). When CouchDB cannot say, the change goes out:
    a repeat is better than a loss.

    Args:
        host: The connection (its user's transport).
        sub: The subscription (its database).
        change: The buffered change in question.

    Returns:
        False only when CouchDB answers with another winning revision.
    """
    transport = host.user_transport
    if transport is None:
        return True
    try:
        answer = await transport.request(
            "POST", [sub.request.db, "_all_docs"], json={"keys": [change.doc_id]})
    except CouchError:
        return True
    rows = answer.get("rows") if isinstance(answer, dict) else None
    value = rows[0].get("value") if rows and isinstance(rows[0], dict) else None
    return not isinstance(value, dict) or value.get("rev") == change.rev
