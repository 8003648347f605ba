"""Merging rerank scores with the retrieval order."""

from __future__ import annotations

import pytest

from rankstream.ranking import interpolated, rank, stage_order
from rankstream.wire.handoff import Candidate


def candidates(n: int) -> list[Candidate]:
    return [
        Candidate(doc_id=f"d{i}", text=f"text {i}", retrieval_score=1 - i / 10, retrieval_rank=i)
        for i in range(1, n + 1)
    ]


def test_scored_candidates_are_ordered_by_score() -> None:
    ranked = rank(candidates(3), [0.1, 5.0, 2.0], top_k=3)
    assert [d.doc_id for d in ranked] == ["d2", "d3", "d1"]
    assert [d.retrieval_rank for d in ranked] == [2, 3, 1]


def test_unscored_candidates_follow_in_retrieval_order_with_their_retrieval_score() -> None:
    ranked = rank(candidates(4), [1.0, 3.0], top_k=4)
    assert [d.doc_id for d in ranked] == ["d2", "d1", "d3", "d4"]
    assert ranked[2].score == ranked[2].retrieval_score


def test_ties_keep_the_retrieval_order() -> None:
    assert [d.doc_id for d in rank(candidates(3), [1.0, 1.0, 1.0], top_k=3)] == ["d1", "d2", "d3"]


def test_only_top_k_are_returned() -> None:
    assert len(rank(candidates(10), [0.0] * 10, top_k=4)) == 4


def test_no_scores_means_the_retrieval_order() -> None:
    assert [d.doc_id for d in rank(candidates(3), [], top_k=2)] == ["d1", "d2"]


def test_an_interpolated_stage_blends_normalised_model_and_previous_scores() -> None:
    # before: 30, 20, 10 (normalised 1, 0.5, 0); model: 0, 4, 8 (normalised 0, 0.5, 1)
    assert interpolated([0.0, 4.0, 8.0], [30.0, 20.0, 10.0], 0.25) == pytest.approx(
        [0.75, 0.5, 0.25]
    )


def test_interpolation_keeps_a_good_order_that_the_model_alone_would_overturn() -> None:
    before, model = [30.0, 20.0, 10.0], [0.0, 4.0, 8.0]

    assert [i for i, _ in stage_order(before, model)] == [2, 1, 0]
    assert [i for i, _ in stage_order(before, model, 0.25)] == [0, 1, 2]
    assert [i for i, _ in stage_order(before, model, 1.0)] == [2, 1, 0]
    assert [i for i, _ in stage_order(before, model, 0.0)] == [0, 1, 2]
