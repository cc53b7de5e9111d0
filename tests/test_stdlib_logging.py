"""Records of stdlib ``logging`` (third-party libraries) become gateway log events: one JSON
line each under WALLABY_LOG_FORMAT=json, with the logger's name, level and traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from twisted.logger import LogPublisher

from gateway.http.accesslog import json_lines_observer
from gateway.stdlib_logging import TwistedLogHandler, route_stdlib_logging


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    publisher = LogPublisher(json_lines_observer(stream))
    root = logging.getLogger()
    level = root.level
    handler = route_stdlib_logging(publisher)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_library_warning_is_one_json_line_with_its_logger_and_level(lines: io.StringIO) -> None:
    logging.getLogger("some.library").warning("pool of %d is full", 8)
    [record] = _records(lines)
    assert record["namespace"] == "some.library"
    assert record["level"] == "warn"
    assert record["message"] == "pool of 8 is full"


def test_levels_map_and_info_is_left_out(lines: io.StringIO) -> None:
    library = logging.getLogger("lib")
    library.info("chatter")
    library.error("bad")
    library.critical("worse")
    assert [(r["level"], r["message"]) for r in _records(lines)] == [("error", "bad"),
                                                                      ("critical", "worse")]


def test_a_traceback_stays_in_the_one_line(lines: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("lib").exception("failed")
    [record] = _records(lines)
    assert record["level"] == "error"
    assert str(record["message"]).startswith("failed\nTraceback")
    assert "ValueError: boom" in str(record["message"])


def test_a_bad_format_string_still_logs_and_does_not_raise() -> None:
    stream = io.StringIO()
    handler = TwistedLogHandler(LogPublisher(json_lines_observer(stream)))
    # Handed over directly: pytest's own capture handler raises on such a record.
    handler.emit(logging.LogRecord("lib", logging.WARNING, __file__, 1, "%d items",
                                   ("not a number",), None))
    [record] = _records(stream)
    assert "%d items" in str(record["message"]) and "not a number" in str(record["message"])


def test_a_logger_set_to_a_lower_level_still_passes_only_warnings(lines: io.StringIO) -> None:
    noisy = logging.getLogger("some.noisy.library")
    noisy.setLevel(logging.DEBUG)  # libraries (or their users) do this
    try:
        noisy.debug("debug detail %s", 1)
        noisy.info("info detail")
        noisy.warning("a warning")
    finally:
        noisy.setLevel(logging.NOTSET)
    assert [r["message"] for r in _records(lines)] == ["a warning"]
