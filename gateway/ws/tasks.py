"""Background tasks of the WebSocket endpoint: kept until they end, their failures logged."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

__all__ = ["hold_task"]

_log = Logger(namespace="gateway.ws.tasks")


def hold_task(tasks: set[Deferred[Any]], deferred: Deferred[Any]) -> None:
    """Keep ``deferred`` in ``tasks`` until it fires; log a failure other than a cancel.

    Args:
        tasks: The set holding the owner's running tasks (cancelled or awaited by it).
        deferred: The task.
    """
    if not deferred.called:
        tasks.add(deferred)

        def done(result: Any) -> Any:
            tasks.discard(deferred)
            return result

        deferred.addBoth(done)
    deferred.addErrback(_log_task_failure)


def _log_task_failure(failure: Failure) -> None:
    if not failure.check(CancelledError):  # type: ignore[no-untyped-call,unused-ignore]
        _log.failure("websocket task failed", failure, LogLevel.error)
