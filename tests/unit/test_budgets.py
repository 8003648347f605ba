"""Token budgets: the query whole, the document cut to its head or split into windows."""

from __future__ import annotations

import pytest

from rankstream.models.budgets import DocumentBudget, plan_pairs
from tests.unit.fakes import WordCodec

QUERY = (1, 2, 3)
codec = WordCodec()


def document(tokens: int) -> tuple[int, ...]:
    return tuple(range(100, 100 + tokens))


def test_a_document_within_the_budget_is_one_whole_pair() -> None:
    plan = plan_pairs(codec, QUERY, [document(50)], DocumentBudget(max_tokens=64))

    (pair,) = plan.encodings
    assert pair.ids == (*QUERY, 0, *document(50))
    assert (plan.over_budget, plan.truncated_tokens) == (0, 0)


def test_head_keeps_the_first_tokens_and_never_cuts_the_query() -> None:
    plan = plan_pairs(codec, QUERY, [document(300)], DocumentBudget(max_tokens=64))

    (pair,) = plan.encodings
    assert pair.ids[:3] == QUERY
    assert pair.ids[4:] == document(64)
    assert (plan.over_budget, plan.truncated_tokens) == (1, 236)


def test_maxp_scores_half_overlapping_windows_and_keeps_the_best() -> None:
    budget = DocumentBudget(max_tokens=64, long_docs="maxp", max_windows=8)
    plan = plan_pairs(codec, QUERY, [document(10), document(160)], budget)

    windows = [e.ids[4:] for e, owner in zip(plan.encodings, plan.owners, strict=True) if owner]
    assert [w[0] - 100 for w in windows] == [0, 32, 64, 96]  # the last one ends at 160
    assert all(len(w) == 64 for w in windows)
    assert plan.truncated_tokens == 0
    assert plan.candidate_scores([0.5, 1.0, 3.0, 2.0, -1.0]) == [0.5, 3.0]


def test_maxp_stops_at_max_windows_and_counts_what_it_leaves_out() -> None:
    budget = DocumentBudget(max_tokens=64, long_docs="maxp", max_windows=2)
    plan = plan_pairs(codec, QUERY, [document(400)], budget)

    assert len(plan.encodings) == 2
    assert plan.truncated_tokens == 400 - (32 + 64)


def test_without_a_budget_a_document_gets_what_the_query_leaves() -> None:
    room = codec.document_room(QUERY)
    plan = plan_pairs(codec, QUERY, [document(room + 5)], DocumentBudget())

    assert len(plan.encodings[0]) == codec.max_length
    assert plan.truncated_tokens == 5


def test_every_candidate_needs_a_score() -> None:
    plan = plan_pairs(codec, QUERY, [document(5), document(5)], DocumentBudget())
    with pytest.raises(ValueError, match="shorter"):
        plan.candidate_scores([1.0])


def test_best_scores_the_one_window_holding_most_query_tokens() -> None:
    body = document(300)
    with_query = (*body[:200], 1, 2, 3, *body[200:])  # the query's words at token 200
    budget = DocumentBudget(max_tokens=64, long_docs="best")

    plan = plan_pairs(codec, QUERY, [with_query, body], budget)

    first, second = (e.ids[4:] for e in plan.encodings)
    assert plan.owners == [0, 1]  # one pair a document, as `head`
    assert {1, 2, 3} <= set(first)
    assert len(first) == 64
    assert second == body[:64]  # no query token anywhere: the head, as `head` would cut
    assert plan.truncated_tokens == (303 - 64) + (300 - 64)
