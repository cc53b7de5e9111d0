"""CouchDB ``_changes`` feeds: parsing, reconnecting feeds and shared subscriptions.

* :mod:`~gateway.couch.changes.parser` — sans-IO parser of the continuous feed.
* :mod:`~gateway.couch.changes.backoff` — reconnection delays.
* :mod:`~gateway.couch.changes.feed` — :class:`ChangesFeed`, one reconnecting feed (a Service).
* :mod:`~gateway.couch.changes.subscriptions` — :class:`ChangeSubscriptions`, the
  Wallaby ``changes``/``unchanges`` API on shared feeds.
"""

from gateway.couch.changes.backoff import Backoff
from gateway.couch.changes.feed import ChangesFeed
from gateway.couch.changes.parser import ChangesParser
from gateway.couch.changes.subscriptions import ChangeSubscriptions

__all__ = ["Backoff", "ChangeSubscriptions", "ChangesFeed", "ChangesParser"]
