"""The access log's event: one JSON line per request, the same text for other observers."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.logger import LogPublisher, formatEvent

from gateway.http.accesslog import AccessLog, json_lines_observer

FIELDS = {"request_id": "ab12", "method": "GET", "path": "/api/v1/db/x", "status": 200,
          "duration_ms": 1.5, "user": "alice"}


def _emit(log_format: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    access = AccessLog(log_format)
    publisher = LogPublisher(events.append)
    access._log.observer = publisher
    access.record(**FIELDS)
    return events


def test_json_lines_observer_writes_the_fields_once() -> None:
    stream = io.StringIO()
    observe = json_lines_observer(stream)
    for event in _emit("json"):
        observe(event)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record.pop("type") == "access"
    assert isinstance(record.pop("time"), float)
    assert record == FIELDS


def test_other_observers_format_the_event_as_the_same_json() -> None:
    (event,) = _emit("json")
    assert json.loads(formatEvent(event)) == FIELDS


def test_text_format() -> None:
    (event,) = _emit("text")
    assert formatEvent(event) == "ab12 GET /api/v1/db/x 200 1.5ms user=alice"
