"""A 304 repeats the ETag the 200 would carry (RFC 9110 15.4.5).

A gzip-coded 200 carries a weak ``W/"…"`` tag. The 304 answering a revalidation of that
same request (same ``Accept-Encoding``) must carry the same weak tag; a strong tag that no
stored response has identifies none of them for update (RFC 9111 4.3.4).
"""

from __future__ import annotations

import pytest

from tests.rest.conftest import ApiClient, Scenario
from tests.rest.test_compression import GZIP, _many_documents
from tests.rest.test_conditional import _strip_upstream_etags


async def test_a_304_to_a_gzip_client_repeats_the_weak_etag_of_its_200(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = scenario.member_client
    url = await _many_documents(scenario)
    # CouchDB 3 gives _all_docs no ETag (pouchdb-server's is already weak): the gateway's own.
    _strip_upstream_etags(monkeypatch)
    await _revalidated_with_the_same_weak_tag(client, url)


async def test_a_304_for_a_large_document_repeats_the_weak_etag_of_its_200(
    scenario: Scenario,
) -> None:
    client = scenario.member_client
    url = f"/api/v1/db/{scenario.db.name}/docs/big"
    await client.put(url, json_body={"text": "x" * 5000})
    await _revalidated_with_the_same_weak_tag(client, url)


async def _revalidated_with_the_same_weak_tag(client: ApiClient, url: str) -> None:
    """GET ``url`` gzip-coded (a weak tag), then revalidate it: 304 with that tag."""
    coded = await client.get(url, headers=GZIP)
    etag = coded.header("ETag")
    assert coded.header("Content-Encoding") == "gzip" and etag and etag.startswith("W/")

    again = await client.get(url, headers={**GZIP, "If-None-Match": etag})
    assert again.status == 304
    assert again.header("ETag") == etag, (again.header("ETag"), etag)
