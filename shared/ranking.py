"""Turning a candidate set and its stages' scores into the ranked answer.

Each stage of a cascade scores the top of the order the stage before left (retrieval's, for
the first) and reorders that top by its scores, ties kept in the order they had; the rest
keep their places behind it. A document's reported score is the last score it got.

A stage may interpolate: its order is then by `w * model + (1 - w) * before`, each of the
two min-max normalised over the candidates the stage scores (`before` is the score each had
in the order the stage received: the retrieval's, or the previous stage's). A cross-encoder
that reads a collection unlike its training data can so refine a good first-stage order
instead of replacing it; `w` is fitted per collection (`rankstream tune`), since the same
blend that helps out of domain can hurt in domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rankstream.retrieval.fusion import min_max
from rankstream.wire.contract import RankedDoc, RankedResult, StageReport, StageTimings, now_ms
from rankstream.wire.handoff import Candidate, CandidateSet

RETRIEVAL = "retrieval"


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    score: float
    stage: str


def retrieval_order(candidates: Sequence[Candidate]) -> list[Scored]:
    return [Scored(c, c.retrieval_score, RETRIEVAL) for c in candidates]


def interpolated(model: Sequence[float], before: Sequence[float], weight: float) -> list[float]:
    """`weight * model + (1 - weight) * before`, each min-max normalised over its list."""
    return [
        weight * m + (1 - weight) * b for m, b in zip(min_max(model), min_max(before), strict=True)
    ]


def rerank_top(
    order: Sequence[Scored], scores: Sequence[float], stage: str, interpolate: float | None = None
) -> list[Scored]:
    """`order` with its first `len(scores)` reordered by `scores` (ties keep their order);
    with `interpolate`, by the blend of `scores` with the scores they had in `order`."""
    before = [s.score for s in order[: len(scores)]]
    top = [
        Scored(order[i].candidate, score, stage)
        for i, score in stage_order(before, scores, interpolate)
    ]
    return top + list(order[len(scores) :])


def stage_order(
    before: Sequence[float], model: Sequence[float], interpolate: float | None = None
) -> list[tuple[int, float]]:
    """A stage's order of the candidates it scored: (position in the order it received,
    final score), best first, ties in the order received. `before[i]` is candidate i's score
    in that order, `model[i]` the stage's model score of it."""
    final = list(model) if interpolate is None else interpolated(model, before, interpolate)
    return sorted(enumerate(final), key=lambda item: (-item[1], item[0]))


def rank(candidates: Sequence[Candidate], scores: Sequence[float], top_k: int) -> list[RankedDoc]:
    """One stage: the first `len(scores)` candidates by score, then the rest in retrieval
    order with their retrieval score."""
    return ranked_docs(rerank_top(retrieval_order(candidates), scores, "rerank"), top_k)


def ranked_docs(order: Sequence[Scored], top_k: int) -> list[RankedDoc]:
    return [
        RankedDoc(
            doc_id=s.candidate.doc_id,
            text=s.candidate.text,
            score=s.score,
            retrieval_rank=s.candidate.retrieval_rank,
            retrieval_score=s.candidate.retrieval_score,
            stage=s.stage,
        )
        for s in order[:top_k]
    ]


def ranked_result(
    candidate_set: CandidateSet,
    order: Sequence[Scored],
    timings: StageTimings,
    model_id: str,
    stages: Sequence[StageReport] = (),
    batch_pairs: int = 0,
    batch_requests: int = 0,
    degraded: bool = False,
) -> RankedResult:
    """The answer, with `timings.total` closed now (request creation -> answer ready)."""
    plan = candidate_set.plan
    timings = timings.model_copy(update={"total": now_ms() - plan.created_at_ms})
    return RankedResult(
        request_id=plan.request_id,
        query=plan.query,
        results=ranked_docs(order, plan.top_k),
        timings_ms=timings,
        batch_pairs=batch_pairs,
        batch_requests=batch_requests,
        reranked=stages[0].candidates if stages else 0,
        degraded=degraded,
        model_id=model_id,
        embedder_model=candidate_set.embedder_model,
        stages=list(stages),
        retrieval=candidate_set.retrieval,
        profile=plan.profile,
    )
