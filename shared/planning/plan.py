"""The plan of one query: everything the workers do for it, decided once at admission
(`rankstream.planning.admission`). It travels inside the candidate set, so the rerank worker
executes it and decides nothing it already says.

A plan with `retrieval` None is a bring-your-own-candidates request: there is no search, the
candidates are the caller's documents in their order.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rankstream.wire.contract import (
    CreatedAt,
    FusionMethod,
    LongDocuments,
    Priority,
    ReplySubject,
    RequestId,
    RetrievalMode,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fusion(_Frozen):
    """How hybrid search fuses its two lists, each cut to its top `depth`
    (rankstream.retrieval.fusion): `rrf`, weighted reciprocal rank fusion, or `convex`, a
    convex combination of per-query min-max normalised scores (the weights sum to 1)."""

    method: FusionMethod = "rrf"
    dense_weight: float = Field(ge=0)
    bm25_weight: float = Field(ge=0)
    depth: int = Field(ge=1)

    @classmethod
    def convex(cls, dense_weight: float, depth: int) -> Fusion:
        return cls(
            method="convex", dense_weight=dense_weight, bm25_weight=1 - dense_weight, depth=depth
        )


def store_identity(lancedb_uri: str) -> str:
    """A short name for the LanceDB store a table lives in (a digest: a URI may name a
    bucket or carry a path an operator would not put on the wire)."""
    return hashlib.sha256(lancedb_uri.encode()).hexdigest()[:16]


class RetrievalPlan(_Frozen):
    """The first stage: search `table` of `store` (as of `table_version`) in `mode` for
    `count` candidates, through `filter` (its canonical SQL), embedding the query with
    `embedder`."""

    mode: RetrievalMode
    store: str = Field(
        description="The LanceDB store (store_identity of its URI): part of the cache key, so "
        "deployments sharing a NATS prefix but not a store never serve each other's answers."
    )
    table: str
    table_version: int | None = None
    filter: str | None = None
    count: int = Field(ge=1, description="Enough for the first rerank stage and for top_k.")
    embedder: str
    fusion: Fusion | None = Field(default=None, description="Hybrid only.")


class StagePlan(_Frozen):
    """One rerank stage: `model` scores the top `depth` of the order the stage before left.

    While `auto` is true, `depth` is only the upper bound: the retrieval worker resolves it
    from the search's confidence (`QueryPlan.with_first_depth`) before the rerank worker
    sees the plan.
    """

    name: str = Field(description="As asked, in the pipeline grammar (e.g. `ce@auto/doc256`).")
    scorer: str
    model: str = Field(description="The model the scorer stands for (rankstream.planning.scorers).")
    depth: int = Field(ge=0)
    auto: bool = False
    auto_policy: str | None = Field(default=None, description="Digest of the depth policy.")
    max_doc_tokens: int | None = Field(default=None, ge=8)
    long_docs: LongDocuments = "head"
    maxp_windows: int = Field(ge=1)
    max_length: int = Field(ge=16, description="Tokens a pair may hold (the model's length).")
    interpolate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The model score's weight in a blend with the score before the stage "
        "(rankstream.ranking); None: the model's score alone.",
    )

    @property
    def max_pairs(self) -> int:
        """The most pairs it can score: one per candidate, or one per MaxP window."""
        return self.depth * (self.maxp_windows if self.long_docs == "maxp" else 1)


class CacheKey(_Frozen):
    """Where the answer is cached (rankstream.cache.keys makes it)."""

    key: str
    context: str = Field(
        description="Digest of everything besides the query the answer depends on."
    )
    query: str = Field(description="The normalised query.")


class QueryPlan(_Frozen):
    """A request as the workers execute it.

    `created_at_ms` is the client's, unless its clock was ahead of the worker's by more
    than the skew allowance (then the time the request was received); `deadline_ms` is
    `created_at_ms + timeout_ms`, both bounded at admission.
    """

    kind: Literal["query", "rerank"]
    request_id: RequestId
    query: str
    reply_to: ReplySubject
    top_k: int = Field(ge=1)
    priority: Priority = 0
    return_documents: bool = True
    created_at_ms: CreatedAt
    timeout_ms: int = Field(ge=1)
    retrieval: RetrievalPlan | None
    stages: tuple[StagePlan, ...] = ()
    profile: str | None = Field(
        default=None,
        description="Digest of the served profile (rankstream.planning.profile) whose plan "
        "this request got by naming none; None: the request chose its own.",
    )
    cache: CacheKey | None = None

    @property
    def deadline_ms(self) -> float:
        return self.created_at_ms + self.timeout_ms

    @property
    def max_pairs(self) -> int:
        """The most pairs all its stages can score together."""
        return sum(stage.max_pairs for stage in self.stages)

    @property
    def first_depth(self) -> int:
        """Candidates the first stage reranks (0: none, the retrieval order is the answer)."""
        return self.stages[0].depth if self.stages else 0

    def with_first_depth(self, depth: int) -> QueryPlan:
        """The plan once `auto` is resolved: the first stage reranks `depth` candidates, no
        later stage more than that; at 0 there is nothing to rerank, so no stage is left."""
        if depth == 0:
            return self.model_copy(update={"stages": ()})
        first = self.stages[0].model_copy(update={"depth": depth, "auto": False})
        later = [s.model_copy(update={"depth": min(s.depth, depth)}) for s in self.stages[1:]]
        return self.model_copy(update={"stages": (first, *later)})
