"""Hybrid fusion by reciprocal rank, and the adaptive-depth policy."""

from __future__ import annotations

import pytest

from rankstream.errors import InvalidRequestError
from rankstream.planning.adaptive_depth import (
    DepthPolicy,
    DepthRule,
    load_depth_policy,
    retrieval_features,
)
from rankstream.retrieval.fusion import RRF_K, FusionWeights, reciprocal_rank_fusion


def test_a_document_both_lists_rank_well_rises_above_either_lists_winner() -> None:
    fused = reciprocal_rank_fusion(["a", "both", "c"], ["x", "both", "y"])

    (top, score), *rest = fused
    assert top == "both"
    assert score == pytest.approx(2 / (RRF_K + 2))
    assert [doc for doc, _ in rest[:2]] == ["a", "x"]  # ties: the dense list first


def test_weights_lean_on_one_list() -> None:
    fused = reciprocal_rank_fusion(["d1", "d2"], ["b1", "b2"], FusionWeights(dense=1, bm25=3))
    assert [doc for doc, _ in fused] == ["b1", "b2", "d1", "d2"]


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


def test_a_policy_survives_json_and_the_packaged_one_loads() -> None:
    assert DepthPolicy.from_json(POLICY.to_json()) == POLICY
    assert load_depth_policy(None).feature in ("dense_margin", "bm25_margin", "overlap")
    with pytest.raises(InvalidRequestError):
        DepthPolicy.from_json('{"feature": "dense_margin"}')


def test_features_read_the_gap_at_the_top_and_the_lists_agreement() -> None:
    features = retrieval_features([0.9, 0.7, 0.6], [12.0, 9.0], overlap_at_10=0.4)
    assert features == pytest.approx({"dense_margin": 0.2, "bm25_margin": 0.25, "overlap": 0.4})
    assert retrieval_features([0.9], [], None) == {}
