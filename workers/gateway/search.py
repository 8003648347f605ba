"""`POST /v1/search`: rankstream's own two-stage search over a table, with stage timings.

Scores: raw scores, as rankstream reports them: the cross-encoder's logit for reranked
documents, the retrieval score (cosine, BM25 or fused) for the rest (`stage` says which).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from rankstream.errors import QueryFailedError
from rankstream.wire.contract import (
    TABLE_PATTERN,
    Depth,
    Priority,
    RetrievalMode,
    RetrievalReport,
    StageReport,
    StageTimings,
)
from rankstream.wire.filters import MAX_FILTER_CHARS
from rankstream.workers.gateway.errors import Api
from rankstream.workers.gateway.openapi import error_responses
from rankstream.workers.gateway.service import GatewayService


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    top_k: int | None = Field(default=None, ge=1, description="Results (default: the setting).")
    depth: Depth | None = Field(
        default=None,
        description="Candidates the cross-encoder reranks; 0: retrieval order; `auto`: the "
        "worker chooses (default: the setting).",
    )
    retrieval: RetrievalMode | None = Field(default=None, description="dense, bm25 or hybrid.")
    pipeline: str | None = Field(
        default=None,
        description="Retrieval and cascade in rankstream's notation, e.g. "
        "`hybrid+ce@100/doc64>ce@20`; replaces depth and retrieval.",
    )
    table: str | None = Field(
        default=None,
        max_length=128,
        pattern=TABLE_PATTERN,
        description="Default: RANKSTREAM_TABLE.",
    )
    filter: str | None = Field(
        default=None,
        max_length=MAX_FILTER_CHARS,
        description="Metadata filter, e.g. `topic = 'energy' AND year >= 2020`.",
    )
    priority: Priority = 0
    return_documents: bool = Field(default=True, description="Include each result's text.")
    cache: bool = Field(default=True, description="Answer from the result cache when it can.")


class SearchHit(BaseModel):
    doc_id: str
    text: str | None = None
    score: float = Field(description="Cross-encoder logit, or retrieval score (see `stage`).")
    stage: str
    retrieval_rank: int
    retrieval_score: float


class SearchResponse(BaseModel):
    request_id: str
    query: str
    results: list[SearchHit]
    timings_ms: StageTimings
    reranked: int
    degraded: bool
    cached: bool
    model_id: str
    embedder_model: str
    stages: list[StageReport]
    retrieval: RetrievalReport


def build_search_router(service: GatewayService) -> APIRouter:
    """`POST /v1/search` over `service`."""
    router = APIRouter(tags=["rankstream"])

    @router.post(
        "/v1/search",
        response_model=SearchResponse,
        response_model_exclude_none=True,
        responses=error_responses(Api.RANKSTREAM, service.settings),
        summary="Two-stage search",
        description="Retrieve from a table (optionally filtered) and rerank. Scores are raw: "
        "the cross-encoder's logit, or the retrieval score where `stage` is `retrieval`. "
        "`timings_ms` gives each stage. Errors: `{error: {code, message}}`.",
    )
    async def search(body: SearchRequest) -> SearchResponse:
        request = service.client.request(body.query, **body.model_dump(exclude={"query"}))
        service.planner.check_bounds(request)  # refused here, not dead-lettered by a worker
        reply = await service.client.send(request)
        if reply.kind == "error":
            raise QueryFailedError(reply.code, reply.message, reply.worker)
        return SearchResponse.model_validate(reply, from_attributes=True)

    return router
