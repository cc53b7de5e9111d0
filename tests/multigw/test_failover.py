"""A WebSocket client behind HAProxy whose gateway is SIGKILLed resumes on the other one.

The client behaves like ``gateway/static/wallaby.js``: it keeps, per subscription, the
seq of the last change it processed (or ``subscribed.since`` before the first), and
after the socket dies reconnects *through the proxy* (which can only send it to the
surviving gateway) and subscribes again with ``since`` set to it. Every subscription
must end up with exactly what CouchDB's own filtered ``_changes`` says, nothing twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from tests.multigw.stack import (
    WebSocketClosed,
    WsClient,
    metric,
    request,
)

DESIGN = {
    "_id": "_design/app",
    "views": {"todo": {"map": "function (doc) { if (doc.kind === 'todo') { emit(doc._id); } }"}},
    "filters": {"by_owner": "function (doc, req) { return doc.owner === req.query.owner; }"},
}


class ResumingSubscriber:
    """One socket, several subscriptions, browser-style resume after any loss."""

    def __init__(self, port: int, token: str, subscriptions: dict[str, dict[str, Any]]) -> None:
        self.port = port
        self.token = token
        self.subscriptions = subscriptions
        self.since: dict[str, Any] = {sid: spec.get("since", 0) for sid, spec in subscriptions.items()}
        self.received: dict[str, list[tuple[str, str]]] = {sid: [] for sid in subscriptions}
        self.feed_to_sid: dict[str, str] = {}
        self.client: WsClient | None = None
        self.connects = 0
        self.refusals: list[int] = []
        self.errors: list[dict[str, Any]] = []

    def connect(self, deadline_s: float = 40.0) -> None:
        deadline = time.monotonic() + deadline_s
        backoff = 0.25
        while True:
            try:
                client = WsClient.connect(self.port, f"/api/v1/changes?token={self.token}")
                if client.status != 101:
                    self.refusals.append(client.status)
                    client.close()
                    raise WebSocketClosed(f"handshake {client.status}")
                self.feed_to_sid = {}
                for sid, spec in self.subscriptions.items():
                    message = {"type": "subscribe", "id": sid, **{k: v for k, v in spec.items() if k != "since"},
                               "since": self.since[sid]}
                    client.send_json(message)
                pending = set(self.subscriptions)
                while pending:
                    message = client.receive(10)
                    if message["type"] == "subscribed":
                        pending.discard(message["id"])
                        self.feed_to_sid[message["feed"]] = message["id"]
                        if self.since[message["id"]] in ("now",):
                            self.since[message["id"]] = message["since"]
                    elif message["type"] == "error":
                        raise AssertionError(f"subscription refused: {message}")
                    else:
                        self._handle(message)
                self.client = client
                self.connects += 1
                return
            except (OSError, WebSocketClosed, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "change":
            sid = self.feed_to_sid[message["feed"]]
            self.received[sid].append((message["id"], message["changes"][0]["rev"]))
            self.since[sid] = message["seq"]
        elif message["type"] == "error":
            self.errors.append(message)

    def pump(self, seconds: float) -> None:
        """Receive for ``seconds``, reconnecting whenever the socket dies."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                assert self.client is not None
                self._handle(self.client.receive(max(0.05, end - time.monotonic())))
            except TimeoutError:
                continue
            except (OSError, WebSocketClosed):
                self.connect()


def _changes(lab: Any, db: str, query: str) -> dict[str, str]:
    """CouchDB's own answer: ``{doc id: winning rev}`` of a filtered ``_changes``."""
    answer = lab.couch("GET", f"/{db}/_changes?since=0&{query}")
    assert answer.status == 200, answer
    return {row["id"]: row["changes"][0]["rev"] for row in answer.json["results"]}


def test_sigkill_of_the_serving_gateway_resumes_on_the_other_through_haproxy(lab: Any) -> None:
    name, password = lab.user()
    db = lab.database([name])
    assert lab.couch("PUT", f"/{db}/_design/app", DESIGN).status == 201
    a = lab.gateway("a")
    b = lab.gateway("b")
    proxy = lab.haproxy(a, b)
    login = request(proxy.port, "POST", "/api/v1/session", body={"name": name, "password": password})
    assert login.status == 200, login
    token = login.json["token"]
    watched = ["d3", "d17", "d40", "d41", "d77", "d90"]
    subscriptions: dict[str, dict[str, Any]] = {
        "all": {"db": db, "since": 0},
        "docs": {"db": db, "since": 0, "include_docs": True, "filter": "_doc_ids", "doc_ids": watched},
        "view": {"db": db, "since": "now", "filter": "_view", "view": "app/todo"},
        "owner": {"db": db, "since": 0, "filter": "app/by_owner", "query": {"owner": "ann"}},
    }
    if not lab.backend.is_pouchdb:  # pouchdb-server has no _selector changes filter
        subscriptions["selector"] = {"db": db, "since": 0, "filter": "_selector",
                                     "selector": {"kind": "todo", "owner": "bob"}}
    subscriber = ResumingSubscriber(proxy.port, token, subscriptions)
    subscriber.connect()
    on_a = metric(a.port, "wallaby_ws_connections")
    on_b = metric(b.port, "wallaby_ws_connections")
    assert on_a + on_b == 1, (on_a, on_b)
    serving, other = (a, b) if on_a == 1 else (b, a)

    written = threading.Event()
    kill_at = threading.Event()
    failures: list[str] = []

    def writer() -> None:
        revs: dict[str, str] = {}
        for i in range(120):
            doc_id = f"d{i % 100}"
            body = {"_id": doc_id, "kind": "todo" if i % 3 else "note",
                    "owner": ("ann", "bob", "cyd")[i % 3], "n": i}
            if doc_id in revs:
                body["_rev"] = revs[doc_id]
            answer = lab.couch("PUT", f"/{db}/{doc_id}", body)
            if answer.status not in (201, 202):
                failures.append(f"{doc_id}: {answer.status}")
                continue
            revs[doc_id] = answer.json["rev"]
            if i == 40:
                kill_at.set()
            time.sleep(0.02)
        # a deletion and a sentinel
        lab.couch("DELETE", f"/{db}/d17?rev={revs['d17']}")
        lab.couch("PUT", f"/{db}/zz-sentinel-{uuid.uuid4().hex[:4]}",
                  {"kind": "todo", "owner": "ann"})
        written.set()

    thread = threading.Thread(target=writer)
    thread.start()
    subscriber.pump(0.01)
    while not kill_at.is_set():
        subscriber.pump(0.1)
    serving.process.kill()  # SIGKILL: no closing message, no close frame
    serving.process.wait()
    while not written.is_set():
        subscriber.pump(0.2)
    thread.join()
    subscriber.pump(4.0)
    assert not failures

    expected = {
        "all": _changes(lab, db, ""),
        "docs": _changes(lab, db, "filter=_doc_ids&doc_ids=" + '["' + '","'.join(watched) + '"]'),
        "owner": _changes(lab, db, "filter=app/by_owner&owner=ann"),
    }
    if "selector" in subscriptions:
        expected["selector"] = {}
    assert subscriber.connects >= 2, "the socket never moved"
    assert metric(other.port, "wallaby_ws_connections") == 1
    for sid, wanted in expected.items():
        got = subscriber.received[sid]
        assert len(got) == len(set(got)), f"{sid}: a change came twice: {got}"
        last: dict[str, str] = {}
        for doc_id, rev in got:
            last[doc_id] = rev
        # every document CouchDB lists, at its current revision; others only at a revision
        # that matched the filter once (their current one no longer does)
        missing = {d: r for d, r in wanted.items() if last.get(d) != r}
        assert not missing, f"{sid}: lost or stale: {missing}"
        if sid == "all":
            assert last == wanted
    # the _view subscription started "now": every todo change after it, each once
    view = subscriber.received["view"]
    assert len(view) == len(set(view)) and view, view
    assert not subscriber.errors, subscriber.errors
    print("connects", subscriber.connects, "refusals", subscriber.refusals,
          {k: len(v) for k, v in subscriber.received.items()})
