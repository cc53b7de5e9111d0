"""Proxy mode joins the verified roles with ',' into one header.

gateway/couch/auth.py ``ProxyAuth.headers``: ``X-Auth-CouchDB-Roles: ",".join(roles)``.
CouchDB's ``proxy_authentication_handler`` splits that header with
``re:split(Else, "\\s*,\\s*", ...)``, so a role whose *name* contains a comma becomes
several roles upstream. CouchDB's ``_users`` validation refuses only roles that *start*
with ``_`` ("No system roles (starting with underscore) in users db"), so a role such as
``"staff,_admin"`` is storable by whoever administers ``_users`` - and in ``proxy`` mode
it makes its holder a server admin (in ``forward`` mode CouchDB reads the role as the
single string it is). The stand-in splits the header as CouchDB does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.authmodes import SECRET, spawn_in_mode
from tests.reliability.conftest import GatewayProcess, basic_header, http
from tests.support.couch_auth_standin import CouchAuthStandIn


@pytest.fixture
def fake() -> Iterator[CouchAuthStandIn]:
    couch = CouchAuthStandIn(secret=SECRET).start()
    couch.add_user("eve", "pw", ["staff,_admin"])
    couch.add_db("private", names=["someone-else"])
    yield couch
    couch.stop()


@pytest.mark.parametrize("mode", ["forward", "proxy"])
def test_a_role_with_a_comma_is_not_split_into_admin(
    fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess], mode: str,
) -> None:
    gateway = spawn_in_mode(fake.url, tmp_path, gateways, mode)
    answer = http("GET", gateway.url + "/api/v1/db/private", None, basic_header("eve", "pw"))
    sent = [r.get("X-Auth-CouchDB-Roles") for r in fake.recorded("/private")]
    assert answer.status == 403, (
        f"{mode}: eve (one role, 'staff,_admin') read a database she is no member of: "
        f"{answer.status}; X-Auth-CouchDB-Roles sent: {sent}")
