"""Cohere's `POST /v2/rerank`, as the `cohere` SDK (`ClientV2.rerank`) and LangChain's
`CohereRerank` call it.

Scores: `relevance_score` is the sigmoid of the cross-encoder's logit, in [0, 1], as Cohere
defines it (rank by it; it is not a calibrated probability).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from rankstream.workers.gateway.service import GatewayService, sigmoid

API_VERSION = "2"


class CohereRerankRequest(BaseModel):
    """Cohere v2 rerank request; fields Cohere defines that rankstream does not use are
    accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="Accepted and ignored: the workers' configured reranker."
    )
    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1, description="The texts to rerank.")
    top_n: int | None = Field(default=None, ge=1, description="Results to return (None: all).")
    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=8,
        description="Tokens a document may take (rankstream's max_doc_tokens; the query is "
        "never cut). None: the workers' default.",
    )
    priority: int = Field(
        default=0, ge=0, le=999, description="0 (default) is the most urgent; 668+ is batch."
    )


class CohereResult(BaseModel):
    index: int = Field(description="The document's position in the request.")
    relevance_score: float = Field(description="sigmoid(logit), in [0, 1].")


class CohereApiVersion(BaseModel):
    version: str = API_VERSION


class CohereBilledUnits(BaseModel):
    search_units: float = 1.0


class CohereMeta(BaseModel):
    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits = Field(default_factory=CohereBilledUnits)


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: CohereMeta = Field(default_factory=CohereMeta)


def build_cohere_router(service: GatewayService) -> APIRouter:
    """`POST /v2/rerank` over `service`."""
    router = APIRouter(tags=["Cohere"])

    @router.post(
        "/v2/rerank",
        response_model=CohereRerankResponse,
        summary="Rerank (Cohere v2)",
        description="Cohere's v2 rerank. `relevance_score` = sigmoid(cross-encoder logit) in "
        "[0, 1], best first. Errors: `{id, message, code}`.",
    )
    async def rerank_v2(body: CohereRerankRequest) -> CohereRerankResponse:
        ranked = await service.rerank(
            "/v2/rerank",
            body.query,
            body.documents,
            top_n=body.top_n,
            max_doc_tokens=body.max_tokens_per_doc,
            priority=body.priority,
        )
        return CohereRerankResponse(
            id=uuid.uuid4().hex,
            results=[CohereResult(index=r.index, relevance_score=sigmoid(r.logit)) for r in ranked],
        )

    return router
