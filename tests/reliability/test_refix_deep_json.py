"""gateway/deep_json.py's fallback path (past the C parser's depth), found by a review.

``deep_json.loads`` measures a refused document's depth with the regex ``_TOKENS``
before reparsing it. For a body whose last string is never closed and that holds many
escaped quotes (``"\\"\\"\\"...``), the regex tries a string at every escaped quote and
runs to the end of the body each time: quadratic in the body size, on the reactor
thread. One unauthenticated ``POST /api/v1/session`` of ~80 KB (the limit is 8 MB)
held the whole gateway for tens of seconds (a 400 KB one: for most of an hour). The
test sends one of 400 KB and asks ``/health`` meanwhile: not a timing figure, a hang
(the socket gives up after 30 s; fixed, the answer comes in milliseconds).
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import spawn_gateway


def _poisoned_body(pairs: int) -> bytes:
    # Deeper than the C scanner takes (about 1,000 levels on 3.11, 1,500 on 3.12), so
    # json.loads raises RecursionError before it reaches the unterminated string.
    return b"[" * 3000 + b'"' + b'\\"' * pairs


def test_an_unterminated_deep_body_does_not_stall_the_gateway(
    couch_backend: CouchBackend, tmp_path: Path
) -> None:
    gateway = spawn_gateway(couch_backend.admin_url, tmp_path)
    try:
        body = _poisoned_body(200_000)  # 400 KB, a twentieth of WALLABY_MAX_BODY_BYTES

        def send() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=120)
            try:
                conn.request("POST", "/api/v1/session", body=body,
                             headers={"Content-Type": "application/json"})
                conn.getresponse().read()
            except OSError:
                pass
            finally:
                conn.close()

        attacker = threading.Thread(target=send, daemon=True)
        attacker.start()
        time.sleep(1.0)  # the body is in and being measured
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        try:
            conn.request("GET", "/health")
            status = conn.getresponse().status
        except TimeoutError:
            status = 0
        finally:
            conn.close()
        assert status == 200, (
            f"GET /health got no answer in 30 s while one unauthenticated {len(body)}-byte "
            "POST /api/v1/session (nested 3,000 deep, an unterminated string of escaped "
            "quotes) was read: deep_json._depth's regex is quadratic on the reactor")
        attacker.join(30)
    finally:
        gateway.stop()


def test_an_unterminated_string_is_one_token() -> None:
    """The property that keeps the depth count linear: no match starts inside it."""
    from gateway.deep_json import _TOKENS

    tokens = [m.group() for m in _TOKENS.finditer(b'[["a\\"b", "' + b'\\"' * 1000)]
    assert tokens[:4] == [b"[", b"[", b'"a\\"b"', b'"' + b'\\"' * 1000]
    assert len(tokens) == 4
