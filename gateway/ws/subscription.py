"""One subscription of one connection: what the client asked for and where it stands."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall

from gateway.ws.catchup import Join
from gateway.ws.hub import FeedKey, SharedFeed
from gateway.ws.protocol import Seq, Subscribe

__all__ = ["Subscription"]


@dataclass(eq=False)
class Subscription:
    """One subscription of one connection.

    Attributes:
        id: Client-chosen id.
        request: The ``subscribe`` message.
        feed: The shared feed, once attached.
        feed_key: The feed key it counts under for its user (``user_feeds`` of the
            factory), once authorised: the request's database and options, on the
            revision of the design document it was authorised against.
        join: Resume state while catching up (``None`` once live).
        trailing: After the catch-up, the join whose filter drops live changes the
            catch-up already sent, until the shared feed has passed each document of it
            (or :data:`~gateway.ws.catchup.TRAILING_SECONDS` have gone by).
        last_seq: Seq of the last change written to the socket; before the first one,
            the seq the subscription started after.
        active: False once ended.
        trailing_end: Lets ``trailing`` go once its time is up, though no live change
            comes (its table holds a revision per document the catch-up sent).
    """

    id: str
    request: Subscribe
    feed: SharedFeed | None = None
    feed_key: FeedKey | None = None
    join: Join | None = None
    trailing: Join | None = None
    last_seq: Seq | None = None
    active: bool = True
    trailing_end: IDelayedCall | None = None

    def ended(self) -> bool:
        """Whether the subscription has ended (re-read after every await)."""
        return not self.active
