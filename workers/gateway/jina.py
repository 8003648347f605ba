"""`POST /v1/rerank` as Jina AI and vLLM serve it, and as Cohere's v1 API does.

One path, three clients. A request from Cohere's SDK (its `X-Fern-SDK-Name: cohere`
header) or with a field only Cohere v1 has (`rank_fields`, `max_chunks_per_doc`) is answered
in Cohere's v1 shape with Cohere's defaults (`return_documents` false, long documents scored
by their best chunk, errors `{id, message, code}`); any other in Jina's / vLLM's
(`return_documents` true, `top_n: 0` = all, errors `{error: {message, type, param, code}}`).

Documents are strings or objects: an object is ranked on its `rank_fields` (in their order,
as `field: value` lines), else on its `text`.

Scores: `relevance_score` is the sigmoid of the cross-encoder's logit, in [0, 1] (what
Jina returns, vLLM for a one-label cross-encoder, and Cohere).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from rankstream.workers.gateway.cohere import (
    CohereV1Response,
    CohereV1Result,
    document_text,
    returned_document,
)
from rankstream.workers.gateway.errors import SDK_HEADER, Api
from rankstream.workers.gateway.openapi import error_responses
from rankstream.workers.gateway.service import Budget, GatewayService, sigmoid

Document = str | dict[str, Any]


class TextDocument(BaseModel):
    text: str


class RerankV1Request(BaseModel):
    """Jina / vLLM / Cohere v1 rerank request; other fields they define are accepted and
    ignored (vLLM's `truncate_prompt_tokens`: pairs are always cut to the model's window)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="Accepted and ignored: the workers' configured reranker."
    )
    query: str = Field(min_length=1)
    documents: list[Document] = Field(
        description="Texts, or objects ranked on their `rank_fields` (else their `text`). "
        "None: an empty result."
    )
    top_n: int | None = Field(
        default=None, ge=0, description="Results to return (None or 0, vLLM's default: all)."
    )
    return_documents: bool | None = Field(
        default=None,
        description="Include each result's `document`. Default: true (Jina, vLLM); false for "
        "Cohere's clients (Cohere v1's default).",
    )
    rank_fields: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Cohere v1: the fields of object documents to rank on, in order.",
    )
    max_chunks_per_doc: int | None = Field(
        default=None,
        ge=1,
        description="Cohere v1: 1 cuts a long document to its first chunk; more (or None) "
        "scores it by its best chunk.",
    )

    def is_cohere(self, request: Request | None) -> bool:
        """Whether Cohere's client sent it (answered in Cohere's v1 shape)."""
        sdk = request.headers.get(SDK_HEADER.decode(), "") if request is not None else ""
        cohere_only = self.rank_fields is not None or self.max_chunks_per_doc is not None
        return cohere_only or sdk.lower().startswith("cohere")


class JinaResult(BaseModel):
    index: int = Field(description="The document's position in the request.")
    document: TextDocument | None = Field(
        default=None, description="The text ranked, when `return_documents`."
    )
    relevance_score: float = Field(description="sigmoid(logit), in [0, 1].")


class JinaUsage(BaseModel):
    total_tokens: int = Field(description="Tokens of the pairs the model read.")
    prompt_tokens: int = Field(description="The same (Jina reports both).")


class JinaRerankResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")  # told apart from Cohere's v1 answer

    id: str
    model: str
    usage: JinaUsage
    results: list[JinaResult]


V1_DESCRIPTION = (
    "Jina's and vLLM's rerank, and Cohere's v1 (for Cohere's SDK, `cohere.Client`, or a body "
    "with `rank_fields` / `max_chunks_per_doc`: Cohere's shape and defaults). "
    "`relevance_score` = sigmoid(cross-encoder logit) in [0, 1], best first. Up to the "
    "gateway's document limit (1,000 by default); no documents, no results. Errors: "
    "`{error: {message, type, param, code}}`; Cohere's clients get `{id, message, code}`."
)


async def rerank_documents(
    service: GatewayService, route: str, body: RerankV1Request, cohere: bool
) -> JinaRerankResponse | CohereV1Response:
    """Rerank `body` and answer in Jina's / vLLM's shape, or Cohere's v1 (`cohere`)."""
    texts = [document_text(d, i, body.rank_fields) for i, d in enumerate(body.documents)]
    top_n = body.top_n or None
    if cohere:
        one_chunk = body.max_chunks_per_doc == 1
        budget = Budget(long_docs="head") if one_chunk else service.chunked(len(texts))
        ranked = await service.rerank(route, body.query, texts, top_n=top_n, budget=budget)
        with_documents = bool(body.return_documents)
        return CohereV1Response(
            id=uuid.uuid4().hex,
            results=[
                CohereV1Result(
                    index=r.index,
                    relevance_score=sigmoid(r.logit),
                    document=returned_document(body.documents[r.index]) if with_documents else None,
                )
                for r in ranked
            ],
        )
    ranked, tokens = await asyncio.gather(
        service.rerank(route, body.query, texts, top_n=top_n),
        service.count_tokens(body.query, texts),
    )
    with_documents = body.return_documents is not False
    return JinaRerankResponse(
        id=f"rerank-{uuid.uuid4().hex}",
        model=service.settings.reranker_model,
        usage=JinaUsage(total_tokens=tokens, prompt_tokens=tokens),
        results=[
            JinaResult(
                index=r.index,
                document=TextDocument(text=r.text) if with_documents else None,
                relevance_score=sigmoid(r.logit),
            )
            for r in ranked
        ],
    )


def build_jina_router(service: GatewayService) -> APIRouter:
    """`POST /v1/rerank` over `service`."""
    router = APIRouter(tags=["Jina / vLLM / Cohere v1"])

    @router.post(
        "/v1/rerank",
        response_model=JinaRerankResponse | CohereV1Response,
        response_model_exclude_none=True,
        responses=error_responses(Api.OPENAI, service.settings),
        summary="Rerank (Jina, vLLM, Cohere v1)",
        description=V1_DESCRIPTION,
    )
    async def rerank_v1(body: RerankV1Request, request: Request) -> Any:
        cohere = body.is_cohere(request)
        if cohere:
            request.state.api = Api.COHERE  # its errors in Cohere's shape
        return await rerank_documents(service, "/v1/rerank", body, cohere)

    return router
