"""An asynchronous Twisted client for CouchDB 3 (the Wallaby backend API, modernised).

Every public method returns a ``Deferred``: ``yield`` it in ``inlineCallbacks`` or
``await`` it. Errors come from one hierarchy rooted at :class:`CouchError`.

Example::

    from gateway.couch import Database, CouchError
    db = Database("todo", username="admin", password="secret", url="http://127.0.0.1:5984")
    info = await db.info()
"""

from gateway.couch.auth import (
    Auth,
    BasicAuth,
    BearerAuth,
    ForwardedAuth,
    NoAuth,
    ProxyAuth,
    SessionAuth,
)
from gateway.couch.database import Database
from gateway.couch.server import CouchServer
from gateway.couch.transport import CouchTransport
from gateway.couch.views import ViewResult
from gateway.errors import (
    BadRequest,
    Conflict,
    CouchError,
    CouchTimeout,
    CouchUnreachable,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Unauthorized,
    UpstreamServerError,
)

__all__ = [
    "Auth",
    "BadRequest",
    "BasicAuth",
    "BearerAuth",
    "Conflict",
    "CouchError",
    "CouchServer",
    "CouchTimeout",
    "CouchTransport",
    "CouchUnreachable",
    "Database",
    "Forbidden",
    "ForwardedAuth",
    "NoAuth",
    "NotFound",
    "PreconditionFailed",
    "ProxyAuth",
    "SessionAuth",
    "Unauthorized",
    "UpstreamServerError",
    "ViewResult",
]
