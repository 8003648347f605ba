"""Retrieval modes, and how `hybrid` fuses the dense and BM25 lists.

Two fusions, each over every list's top `depth` hits:

- `rrf`, reciprocal rank fusion (Cormack et al., 2009): a document's score is the sum over
  the lists of `weight / (K + rank)`, rank counted from 1, K = 60. Ranks, not scores, are
  fused, so cosine and BM25 need no common scale. It needs no fitting, and it can land below
  its better input where one list is much weaker than the other.
- `convex`, a convex combination of normalised scores (Bruch et al., "An Analysis of Fusion
  Functions for Hybrid Retrieval", TOIS 2023): `w * dense + (1 - w) * bm25`, each list's
  scores min-max normalised per query over its own top `depth` (the best hit 1, the last
  0); a document a list did not return gets 0 from it. `w` is fitted on a collection's
  train queries (`rankstream tune`): at w = 1 it is the dense order, at w = 0 BM25's, so a
  fitted weight never has to lose to the better input.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Literal

RRF_K = 60
FusionMethod = Literal["rrf", "convex"]
Hits = Sequence[tuple[str, float]]  # (doc id, the list's own score), best first


class SearchMode(StrEnum):
    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"


def min_max(scores: Sequence[float]) -> list[float]:
    """`scores` mapped onto [0, 1], the highest to 1 and the lowest to 0; all equal: all 1
    (nothing tells them apart, and none is the worst)."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(score - low) / (high - low) for score in scores]


def fuse(
    dense: Hits,
    bm25: Hits,
    method: FusionMethod = "rrf",
    dense_weight: float = 1.0,
    bm25_weight: float = 1.0,
) -> list[tuple[str, float]]:
    """(doc id, fused score), best first; ties keep the dense list's order, then BM25's.

    Args:
        dense, bm25: each list's hits, best first, already cut to the fusion depth.
        method: `rrf` or `convex` (see the module docstring).
        dense_weight, bm25_weight: each list's weight; `convex` uses them as given (the
            plan keeps them summing to 1).
    """
    scores: dict[str, float] = {}
    for hits, weight in ((dense, dense_weight), (bm25, bm25_weight)):
        for doc, contribution in zip(
            (doc for doc, _ in hits), _contributions(hits, method, weight), strict=True
        ):
            scores[doc] = scores.get(doc, 0.0) + contribution
    return sorted(scores.items(), key=lambda item: -item[1])


def overlap_at_10(dense_ids: Sequence[str], bm25_ids: Sequence[str]) -> float:
    """The share of the dense list's top 10 that is also in BM25's top 10 (how much the two
    lists agree: a confidence signal for depth `auto`)."""
    top_dense, top_bm25 = set(dense_ids[:10]), set(bm25_ids[:10])
    return len(top_dense & top_bm25) / max(1, min(10, len(top_dense)))


def _contributions(hits: Hits, method: FusionMethod, weight: float) -> list[float]:
    if method == "rrf":
        return [weight / (RRF_K + rank) for rank in range(1, len(hits) + 1)]
    return [weight * score for score in min_max([score for _, score in hits])]
