"""The structured access log: one event per request via ``twisted.logger``.

Fields: request id, method, route, path (without the query string, which may carry
``rev`` only — but query strings are still left out), status, duration, bytes sent,
client address, user name. Never headers, cookies, tokens or credentials.
"""

from __future__ import annotations

import json
from typing import IO, Any, cast

from twisted.logger import ILogObserver, Logger, formatEvent
from zope.interface import provider

__all__ = ["AccessLog", "json_lines_observer"]


class _JsonText:
    """Formats as the compact JSON of its fields, when (and if) an observer formats it."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __format__(self, spec: str) -> str:
        return json.dumps(self.fields, separators=(",", ":"), default=str)


class AccessLog:
    """Emits access events under the ``gateway.access`` namespace.

    Args:
        log_format: ``json`` (the event's ``log_format`` is one JSON object) or ``text``.
    """

    def __init__(self, log_format: str = "json") -> None:
        self._log = Logger(namespace="gateway.access")
        self.json = log_format == "json"

    def record(self, **fields: Any) -> None:
        """Log one finished request."""
        if self.json:
            # The JSON text is made only by an observer that formats the event's text;
            # json_lines_observer writes ``access`` itself (one encoding per request).
            self._log.info("{access_line}", access_line=_JsonText(fields), access=fields)
        else:
            self._log.info(
                "{request_id} {method} {path} {status} {duration_ms}ms user={user}",
                **fields,
            )


def json_lines_observer(stream: IO[str]) -> ILogObserver:
    """A log observer writing one compact JSON object per event.

    Access events are written as their fields; other events as time, level, namespace,
    message (and the traceback text of failures).
    """

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        access = event.get("access")
        if isinstance(access, dict):
            record: dict[str, Any] = {"time": event.get("log_time"), "type": "access", **access}
        else:
            level = event.get("log_level")
            record = {
                "time": event.get("log_time"),
                "level": getattr(level, "name", str(level)),
                "namespace": event.get("log_namespace"),
                "message": formatEvent(event),
            }
            failure = event.get("log_failure")
            if failure is not None:
                record["traceback"] = failure.getTraceback()
        stream.write(json.dumps(record, default=str) + "\n")
        stream.flush()

    return cast(ILogObserver, observe)
