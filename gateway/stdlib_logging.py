"""Messages of libraries that log through the standard library, as gateway log events.

Without this, a third-party ``logging`` warning reaches stderr through Python's last-resort
handler as bare text, outside ``WALLABY_LOG_FORMAT=json`` and out of order with the rest.
"""

from __future__ import annotations

import logging

from twisted.logger import ILogObserver, Logger, LogLevel

_LEVELS = ((logging.CRITICAL, LogLevel.critical), (logging.ERROR, LogLevel.error),
           (logging.WARNING, LogLevel.warn), (logging.INFO, LogLevel.info))


class TwistedLogHandler(logging.Handler):
    """A ``logging`` handler that re-emits each record as a Twisted log event.

    The event's namespace is the record's logger name; its message is the record's
    message, with the traceback text when the record carries one.
    """

    def __init__(self, observer: ILogObserver) -> None:
        """Emit to ``observer`` (the global log publisher in the gateway)."""
        super().__init__()
        self.observer = observer

    def emit(self, record: logging.LogRecord) -> None:
        """Hand ``record`` to the observer as one event."""
        level = next((twisted for number, twisted in _LEVELS if record.levelno >= number),
                     LogLevel.debug)
        try:
            text = self.format(record)
        except Exception:  # a bad format string must not lose the message, nor raise
            text = f"{record.msg!r} {record.args!r}"
        Logger(namespace=record.name, observer=self.observer).emit(level, "{message}",
                                                                   message=text)


def route_stdlib_logging(observer: ILogObserver, level: int = logging.WARNING) -> TwistedLogHandler:
    """Send records of ``level`` and above, from every stdlib logger, to ``observer``.

    Args:
        observer: where the events go.
        level: the least severe record passed on (the root logger is set to it).

    Returns:
        The handler installed on the root logger (remove it to undo).
    """
    handler = TwistedLogHandler(observer)
    handler.setLevel(level)  # a library's logger set to DEBUG still hands the root its records
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
