"""Turning a candidate set and its rerank scores into the ranked answer."""

from __future__ import annotations

from collections.abc import Sequence

from rankstream.wire.messages import (
    Candidate,
    CandidateSet,
    RankedDoc,
    RankedResult,
    StageTimings,
    now_ms,
)


def rank(candidates: Sequence[Candidate], scores: Sequence[float], top_k: int) -> list[RankedDoc]:
    """The first `len(scores)` candidates by rerank score (ties keep retrieval order), then
    the unscored rest in retrieval order with their retrieval score."""
    scored = sorted(
        zip(candidates[: len(scores)], scores, strict=True),
        key=lambda pair: (-pair[1], pair[0].retrieval_rank),
    )
    unscored = [(c, c.retrieval_score) for c in candidates[len(scores) :]]
    return [
        RankedDoc(
            doc_id=candidate.doc_id,
            text=candidate.text,
            score=score,
            retrieval_rank=candidate.retrieval_rank,
            retrieval_score=candidate.retrieval_score,
        )
        for candidate, score in [*scored, *unscored][:top_k]
    ]


def ranked_result(
    candidate_set: CandidateSet,
    scores: Sequence[float],
    timings: StageTimings,
    model_id: str,
    batch_pairs: int = 0,
    batch_requests: int = 0,
    degraded: bool = False,
) -> RankedResult:
    """The answer, with `timings.total` closed now (request creation -> answer ready)."""
    request = candidate_set.request
    timings = timings.model_copy(update={"total": now_ms() - request.created_at_ms})
    return RankedResult(
        request_id=request.request_id,
        query=request.query,
        results=rank(candidate_set.candidates, scores, request.top_k),
        timings_ms=timings,
        batch_pairs=batch_pairs,
        batch_requests=batch_requests,
        reranked=len(scores),
        degraded=degraded,
        model_id=model_id,
        embedder_model=candidate_set.embedder_model,
    )
