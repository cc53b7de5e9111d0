"""The embedded pouchdb-server: loopback only, admin user, data kept across restarts, no strays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import deferToThread

from gateway.couch import BasicAuth, CouchServer, NoAuth, Unauthorized
from gateway.embedded import EmbeddedCouch
from tests.conftest import CouchBackend


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


async def test_restart_keeps_data_and_stop_leaves_no_process(
    couch_backend: CouchBackend, tmp_path: Path, reactor: Any, pool: Any
) -> None:
    if couch_backend.embedded is None:
        pytest.skip("checks the embedded server, which an external COUCHDB_URL run does not use")
    server = EmbeddedCouch(tmp_path / "data", admin_password="pw-embedded")
    await deferToThread(server.start)
    try:
        assert server.host == "127.0.0.1"
        couch = CouchServer(server.url, reactor=reactor, pool=pool,
                            auth=BasicAuth("admin", "pw-embedded"))
        with pytest.raises(Unauthorized):
            await couch.as_identity(BasicAuth("admin", "wrong")).database("keep").info()
        anonymous = await couch.as_identity(NoAuth()).session()
        assert anonymous["userCtx"]["name"] is None
        database = couch.database("keep")
        await database.create()
        await database.save({"_id": "survivor", "v": 42})
        pid = server.process.pid if server.process else -1
        await pool.closeCachedConnections()
        await deferToThread(server.kill)
        assert not _alive(pid)
        await deferToThread(server.restart)
        assert (await database.get("survivor"))["v"] == 42
        # The plain-text admin password was hashed on first start, as CouchDB does.
        assert "pw-embedded" not in (tmp_path / "data" / "config.json").read_text()
    finally:
        pid = server.process.pid if server.process else -1
        await pool.closeCachedConnections()
        await deferToThread(server.stop)
    assert server.process is None
    assert not _alive(pid)
