"""Pairing ``_bulk_docs`` answers with the documents sent, whatever order they come in."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.couch import Database
from gateway.couch.bulk import align_bulk_results, in_request_order
from gateway.errors import UpstreamServerError

_ids = st.text(alphabet="abcdef", min_size=1, max_size=6)


@given(
    st.lists(st.one_of(_ids, st.none()), max_size=12).filter(
        lambda ids: len({i for i in ids if i}) == len([i for i in ids if i])
    ),
    st.randoms(use_true_random=False),
)
def test_results_in_any_order_are_paired_by_id(ids: list[str | None], rng: Any) -> None:
    docs = [{"_id": i} if i else {"n": n} for n, i in enumerate(ids)]
    expected = [
        {"id": i or f"generated-{n}", "rev": f"1-{n:032x}"} for n, i in enumerate(ids)
    ]
    shuffled = expected[:]
    rng.shuffle(shuffled)
    aligned = align_bulk_results(docs, shuffled)
    named = [(d, r) for d, r in zip(docs, aligned, strict=True) if "_id" in d]
    assert all(r["id"] == d["_id"] for d, r in named)
    assert sorted(map(repr, aligned)) == sorted(map(repr, expected))
    in_order = [r for d, r in zip(docs, aligned, strict=True) if "_id" not in d]
    assert in_order == [r for r in shuffled if r["id"].startswith("generated-")]


def test_repeated_ids_take_their_results_in_order() -> None:
    docs = [{"_id": "a"}, {"_id": "b"}, {"_id": "a"}]
    results = [
        {"id": "b", "rev": "1-b"},
        {"id": "a", "rev": "1-a"},
        {"id": "a", "error": "conflict", "reason": "Document update conflict."},
    ]
    assert align_bulk_results(docs, results) == [results[1], results[0], results[2]]


@pytest.mark.parametrize(
    "results",
    [
        [{"id": "a", "rev": "1-a"}],
        [{"id": "a", "rev": "1-a"}, {"id": "a", "rev": "1-b"}],
        [{"id": "a", "rev": "1-a"}, {"id": "c", "rev": "1-c"}, {"id": "d", "rev": "1-d"}],
    ],
    ids=["a result missing", "an id twice", "an id never sent"],
)
def test_an_answer_that_cannot_be_paired_is_an_upstream_error(
    results: list[dict[str, Any]],
) -> None:
    with pytest.raises(UpstreamServerError) as raised:
        align_bulk_results([{"_id": "a"}, {"_id": "b"}], results)
    assert raised.value.status == 502 and raised.value.error == "bad_bulk_answer"


async def test_every_saved_document_gets_its_own_rev(db: Database) -> None:
    # pouchdb-server sometimes answers a batch out of order; a positional pairing gave a
    # document another one's _id and _rev.
    docs: list[dict[str, Any]] = [{"_id": f"d{n:03d}", "n": n} for n in range(60)]
    docs += [{"n": n} for n in range(60, 80)]
    for _ in range(3):
        await db.bulk_save(docs)
        stored = await db.all_docs(include_docs=True)
        by_id = {row["id"]: row["doc"] for row in stored}
        for doc in docs:
            assert by_id[doc["_id"]] == doc
        for doc in docs:
            doc["n"] += 1000


async def test_replicated_revisions_are_written_as_given(db: Database) -> None:
    rev = "3-" + "c" * 32
    answer = await db.bulk_save([{"_id": "r", "_rev": rev, "v": 1}], new_edits=False)
    assert answer == []
    assert (await db.get("r"))["_rev"] == rev


def test_the_rest_proxy_reorders_only_an_answer_out_of_order() -> None:
    request = {"docs": [{"_id": "a"}, {"v": 1}, {"_id": "b"}]}
    ordered = [{"id": "a", "rev": "1-a"}, {"id": "x", "rev": "1-x"}, {"id": "b", "rev": "1-b"}]
    assert in_request_order(request, ordered) is ordered
    swapped = [ordered[2], ordered[1], ordered[0]]
    assert in_request_order(request, swapped) == ordered


@pytest.mark.parametrize(
    ("request_body", "answer"),
    [
        ({"docs": [{"_id": "a"}, {"_id": "b"}]}, [{"id": "b", "rev": "1-b"}]),
        ({"docs": [{"_id": "a"}, {"_id": "b"}], "new_edits": False}, []),
        ({"docs": [{"_id": "a"}]}, {"error": "bad_request"}),
        ({"docs": "a"}, [{"id": "a", "rev": "1-a"}]),
        ([{"_id": "a"}], [{"id": "a", "rev": "1-a"}]),
    ],
    ids=["unpairable", "new_edits false", "not a list", "docs not a list", "not an object"],
)
def test_the_rest_proxy_leaves_other_answers_as_they_are(request_body: Any, answer: Any) -> None:
    assert in_request_order(request_body, answer) is answer
