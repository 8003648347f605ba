"""Cohere's rerank: `POST /v2/rerank`, as the `cohere` SDK (`ClientV2.rerank`) and
LangChain's `CohereRerank` call it; and the v1 shape (`cohere.Client.rerank`, LlamaIndex's
CohereRerank), which `POST /v1/rerank` answers (jina.py) for Cohere's clients.

Scores: `relevance_score` is the sigmoid of the cross-encoder's logit, in [0, 1], as Cohere
defines it (rank by it; it is not a calibrated probability).

Long documents: Cohere splits a document longer than the model's window into chunks and
scores it by its best chunk. Here (`GatewayService.chunked`): windows of the room the query
leaves, half-overlapping, at most RANKSTREAM_MAXP_MAX_WINDOWS, the best kept (`maxp`), while
the documents' windows fit the request pair cap, else the one window holding the most query
tokens (`best`). `max_tokens_per_doc` (v2) up to the model's max_length cuts each document to
that many tokens instead; v1's `max_chunks_per_doc: 1` cuts to the first chunk.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from rankstream.errors import InvalidRequestError
from rankstream.workers.gateway.errors import Api
from rankstream.workers.gateway.openapi import error_responses
from rankstream.workers.gateway.service import GatewayService, sigmoid

API_VERSION = "2"
PRIORITY_DESCRIPTION = "0 (default) is the most urgent; 668+ is the batch lane."


class CohereRerankRequest(BaseModel):
    """Cohere v2 rerank request; fields Cohere defines that rankstream does not use are
    accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="Accepted and ignored: the workers' configured reranker."
    )
    query: str = Field(min_length=1)
    documents: list[str] = Field(
        description="The texts to rerank (none: an empty result). Each must be non-empty."
    )
    top_n: int | None = Field(default=None, ge=1, description="Results to return (None: all).")
    max_tokens_per_doc: int | None = Field(
        default=None,
        ge=8,
        description="Up to the model's max_length (512): each document is cut to this many "
        "tokens. More, or None (Cohere's default, 4096): a long document is scored by its "
        "best chunk (see the API description). The query is never cut.",
    )
    priority: int = Field(default=0, ge=0, le=999, description=PRIORITY_DESCRIPTION)


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


# --- v1 (answered on /v1/rerank to Cohere's clients) ---
class CohereV1Result(BaseModel):
    index: int = Field(description="The document's position in the request.")
    relevance_score: float = Field(description="sigmoid(logit), in [0, 1].")
    document: dict[str, Any] | None = Field(
        default=None,
        description="With `return_documents: true`: the document as sent (`{text}` for a "
        "string, the object with all its fields otherwise).",
    )


class CohereV1Response(BaseModel):
    model_config = ConfigDict(extra="forbid")  # told apart from Jina's answer

    id: str
    results: list[CohereV1Result]
    meta: CohereMeta = Field(
        default_factory=lambda: CohereMeta(api_version=CohereApiVersion(version="1"))
    )


def document_text(document: str | dict[str, Any], index: int, rank_fields: list[str] | None) -> str:
    """What a document is ranked on: a string itself; an object's `rank_fields`, in their
    order, as `field: value` lines (as Cohere ranks structured documents), else its
    `text` field.

    Raises:
        InvalidRequestError: an object without the fields to rank on (naming its index).
    """
    if isinstance(document, str):
        return document
    if rank_fields:
        lines = [
            f"{name}: {_field_text(document[name])}" for name in rank_fields if name in document
        ]
        if not lines:
            raise InvalidRequestError(
                f"documents[{index}] has none of the rank_fields {rank_fields}: give it at "
                "least one of them"
            )
        return "\n".join(lines)
    text = document.get("text")
    if not isinstance(text, str):
        raise InvalidRequestError(
            f"documents[{index}] is an object without a `text` string: give it one, or name "
            "the fields to rank on in `rank_fields`"
        )
    return text


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def returned_document(document: str | dict[str, Any]) -> dict[str, Any]:
    """A document as Cohere v1 returns it: `{text}` for a string, the object otherwise."""
    return {"text": document} if isinstance(document, str) else dict(document)


def build_cohere_router(service: GatewayService) -> APIRouter:
    """`POST /v2/rerank` over `service`."""
    router = APIRouter(tags=["Cohere"])

    @router.post(
        "/v2/rerank",
        response_model=CohereRerankResponse,
        responses=error_responses(Api.COHERE, service.settings),
        summary="Rerank (Cohere v2)",
        description="Cohere's v2 rerank. `relevance_score` = sigmoid(cross-encoder logit) in "
        "[0, 1], best first. Up to the gateway's document limit (1,000 by default: "
        "RANKSTREAM_MAX_DEPTH); no documents, no results. A long document is scored by its "
        "best chunk: windows of what the query leaves of the model's 512 tokens, "
        "half-overlapping, at most RANKSTREAM_MAXP_MAX_WINDOWS, each scored and the best kept, "
        "while the documents' windows fit RANKSTREAM_MAX_REQUEST_PAIRS; past that the one "
        "window with the most query terms. Errors: `{id, message, code}`.",
    )
    async def rerank_v2(body: CohereRerankRequest) -> CohereRerankResponse:
        ranked = await service.rerank(
            "/v2/rerank",
            body.query,
            body.documents,
            top_n=body.top_n,
            budget=service.chunked(len(body.documents), body.max_tokens_per_doc),
            priority=body.priority,
        )
        return CohereRerankResponse(
            id=uuid.uuid4().hex,
            results=[CohereResult(index=r.index, relevance_score=sigmoid(r.logit)) for r in ranked],
        )

    return router
