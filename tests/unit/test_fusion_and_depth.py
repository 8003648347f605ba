"""Hybrid fusion (reciprocal rank, convex combination), and the adaptive-depth policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankstream.errors import InvalidRequestError
from rankstream.planning.adaptive_depth import (
    DepthPolicy,
    DepthRule,
    load_depth_policy,
    retrieval_features,
)
from rankstream.retrieval.fusion import RRF_K, fuse, min_max


def hits(*docs: str) -> list[tuple[str, float]]:
    """A list best first, scored like cosines that fall by 0.1 a rank."""
    return [(doc, 0.9 - 0.1 * rank) for rank, doc in enumerate(docs)]


def test_a_document_both_lists_rank_well_rises_above_either_lists_winner() -> None:
    fused = fuse(hits("a", "both", "c"), hits("x", "both", "y"))

    (top, score), *rest = fused
    assert top == "both"
    assert score == pytest.approx(2 / (RRF_K + 2))
    assert [doc for doc, _ in rest[:2]] == ["a", "x"]  # ties: the dense list first


def test_weights_lean_on_one_list() -> None:
    fused = fuse(hits("d1", "d2"), hits("b1", "b2"), dense_weight=1, bm25_weight=3)
    assert [doc for doc, _ in fused] == ["b1", "b2", "d1", "d2"]


def test_scores_are_normalised_per_list_best_to_one_worst_to_zero() -> None:
    assert min_max([12.0, 7.5, 3.0]) == [1.0, 0.5, 0.0]
    assert min_max([0.4, 0.4]) == [1.0, 1.0]
    assert min_max([]) == []


# The relevant document is dense's clear winner (cosine 0.95 against a crowd near 0.50) and
# missing from BM25's list, whose winner is dense's distant second: rank fusion sees only
# that the second is in both lists, not the gap, and puts it first.
DENSE = [("relevant", 0.95), ("b1", 0.50), ("d3", 0.49), ("d4", 0.49)]
BM25 = [("b1", 14.0), ("b2", 13.9), ("b3", 13.8), ("b4", 2.0)]


def test_rank_fusion_can_lose_to_its_better_input_where_a_fitted_convex_one_does_not() -> None:
    rrf = [doc for doc, _ in fuse(DENSE, BM25)]
    convex = [doc for doc, _ in fuse(DENSE, BM25, "convex", 0.7, 0.3)]

    assert DENSE[0][0] == "relevant"  # the better input ranks it first
    assert rrf.index("relevant") > 0
    assert convex[0] == "relevant"


def test_a_convex_weight_of_one_or_zero_is_one_list_alone() -> None:
    # (each list's last hit normalises to 0, as a document it did not return)
    dense_only = [doc for doc, _ in fuse(DENSE, BM25, "convex", 1.0, 0.0)]
    bm25_only = [doc for doc, _ in fuse(DENSE, BM25, "convex", 0.0, 1.0)]
    assert dense_only[:3] == [doc for doc, _ in DENSE][:3]
    assert bm25_only[:3] == [doc for doc, _ in BM25][:3]


POLICY = DepthPolicy(
    "dense_margin", (DepthRule(0.10, 5), DepthRule(0.02, 20), DepthRule(0.0, 40)), fallback=30
)


@pytest.mark.parametrize(
    ("margin", "depth"), [(0.30, 5), (0.10, 5), (0.05, 20), (0.0, 40), (-1.0, 40)]
)
def test_a_confident_retrieval_gets_a_shallow_rerank(margin: float, depth: int) -> None:
    assert POLICY.choose({"dense_margin": margin}, max_depth=50) == (depth, margin)


def test_the_depth_never_passes_the_cap_and_a_missing_feature_falls_back() -> None:
    assert POLICY.choose({"dense_margin": 0.0}, max_depth=25) == (25, 0.0)
    assert POLICY.choose({}, max_depth=50) == (30, None)


def test_a_policy_survives_json_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    assert DepthPolicy.from_json(POLICY.to_json()) == POLICY
    (tmp_path / "policy.json").write_text(POLICY.to_json())
    assert load_depth_policy(tmp_path / "policy.json") == POLICY
    with pytest.raises(InvalidRequestError):
        DepthPolicy.from_json('{"feature": "dense_margin"}')
    with pytest.raises(InvalidRequestError, match=r"missing\.json"):
        load_depth_policy(tmp_path / "missing.json")


def test_features_read_the_gap_at_the_top_and_the_lists_agreement() -> None:
    features = retrieval_features([0.9, 0.7, 0.6], [12.0, 9.0], overlap_at_10=0.4)
    assert features == pytest.approx({"dense_margin": 0.2, "bm25_margin": 0.25, "overlap": 0.4})
    assert retrieval_features([0.9], [], None) == {}
