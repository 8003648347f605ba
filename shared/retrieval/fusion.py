"""Retrieval modes, and how `hybrid` fuses the dense and BM25 lists: reciprocal rank fusion.

A document's fused score is the sum over the lists of `weight / (K + rank)`, rank counted
from 1 (Cormack et al., 2009: K = 60). Each list contributes its top `hybrid_fusion_depth`
hits. Ranks, not raw scores, are fused, so cosine and BM25 need no common scale; the
weights let a collection where one list is much weaker lean on the other (measured in the
README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

RRF_K = 60


class SearchMode(StrEnum):
    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class FusionWeights:
    dense: float = 1.0
    bm25: float = 1.0


def reciprocal_rank_fusion(
    dense: Sequence[str], bm25: Sequence[str], weights: FusionWeights = FusionWeights()
) -> list[tuple[str, float]]:
    """(doc id, fused score), best first; ties keep the dense list's order, then BM25's."""
    scores: dict[str, float] = {}
    for ranked, weight in ((dense, weights.dense), (bm25, weights.bm25)):
        for rank, doc in enumerate(ranked, start=1):
            scores[doc] = scores.get(doc, 0.0) + weight / (RRF_K + rank)
    return sorted(scores.items(), key=lambda item: -item[1])
