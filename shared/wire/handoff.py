"""What one worker hands the next: the retrieval worker's candidate set, which the rerank
worker executes the rest of the plan on. Not part of the public contract."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

from rankstream.planning.plan import QueryPlan
from rankstream.wire.contract import RerankRequest, RetrievalReport, StageTimings, WireModel, now_ms


def dedup_id(request_id: str, stage: str) -> str:
    """The `Nats-Msg-Id` of a request's message at one stage. Hashed: nats-py strips header
    values, so ids differing only in surrounding whitespace would otherwise collide."""
    return f"{hashlib.sha256(request_id.encode('utf-8', 'surrogatepass')).hexdigest()}:{stage}"


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_id: str
    text: str
    retrieval_score: float
    retrieval_rank: int = Field(ge=1)
    token_ids: list[int] | None = Field(
        default=None,
        description="The text's token ids (no special tokens) for the cross-encoder whose "
        "tokenizer the candidate set names; computed once at index time.",
    )


class CandidateSet(WireModel):
    """The plan and its candidates, best first by retrieval (or in the caller's order)."""

    plan: QueryPlan
    candidates: list[Candidate]
    timings_ms: StageTimings = Field(default_factory=StageTimings)
    published_at_ms: float = Field(default_factory=now_ms)
    embedder_model: str = "none"
    retrieval: RetrievalReport = Field(default_factory=lambda: RetrievalReport(mode="none"))
    tokenizer: str | None = Field(
        default=None, description="Fingerprint of the tokenizer that made the token_ids."
    )
    query_vector: list[float] | None = Field(
        default=None, description="The query's embedding, cached with the answer (semantic tier)."
    )


def brought_candidates(request: RerankRequest) -> list[Candidate]:
    """A rerank request's documents as candidates: ids as given (else their position from
    0), retrieval rank their position from 1, no retrieval score."""
    return [
        Candidate(
            doc_id=document.id if document.id is not None else str(position),
            text=document.text,
            retrieval_score=0.0,
            retrieval_rank=position + 1,
        )
        for position, document in enumerate(request.documents)
    ]
