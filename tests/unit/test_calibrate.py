"""`calibrate-depth` (and `tune`'s `auto`) simulate reranking the top d of one deep pass."""

from __future__ import annotations

from rankstream.workers.tools.calibrate import Observed

OBSERVED = Observed(
    "q",
    {"dense_margin": 0.1},
    [(1, "a", 0.2), (2, "b", 0.9), (3, "c", 0.5), (4, "d", 0.5)],
    rest=["e"],
)


def test_reranking_the_top_d_reorders_only_those_by_score() -> None:
    assert OBSERVED.ranking(2) == ["b", "a", "c", "d", "e"]
    assert OBSERVED.ranking(0) == ["a", "b", "c", "d", "e"]


def test_ties_keep_the_retrieval_order() -> None:
    assert OBSERVED.ranking(4) == ["b", "c", "d", "a", "e"]
