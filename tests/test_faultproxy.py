"""The fault-injection proxy itself, and the client's timeout through a stalled path."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.couch import CouchServer, CouchTimeout, CouchUnreachable
from tests.conftest import CouchBackend
from tests.support.faultproxy import FaultProxy


async def test_forwards_then_stalls_then_resets(
    couch_backend: CouchBackend, admin: CouchServer, reactor: Any, pool: Any
) -> None:
    port = int(couch_backend.url.rsplit(":", 1)[1])
    proxy = FaultProxy(reactor, port)
    proxy.listen()
    try:
        through = CouchServer(proxy.url, reactor=reactor, pool=pool, timeout=1.0,
                              auth=admin.transport.auth)
        assert (await through.session())["userCtx"]["roles"] == ["_admin"]
        assert proxy.accepted >= 1
        proxy.stall()
        with pytest.raises(CouchTimeout):
            await through.session()
        proxy.resume()
        proxy.reset_all()
        await pool.closeCachedConnections()
        assert (await through.session())["ok"] is True
        await proxy.close()
        with pytest.raises(CouchUnreachable):
            await through.session()
    finally:
        await proxy.close()
