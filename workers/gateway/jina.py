"""`POST /v1/rerank` as Jina AI and vLLM serve it.

Scores: `relevance_score` is the sigmoid of the cross-encoder's logit, in [0, 1] (what
Jina returns, and vLLM for a one-label cross-encoder).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from rankstream.workers.gateway.service import GatewayService, sigmoid


class TextDocument(BaseModel):
    text: str = Field(min_length=1)


class JinaRerankRequest(BaseModel):
    """Jina / vLLM rerank request; other fields they define are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="Accepted and ignored: the workers' configured reranker."
    )
    query: str = Field(min_length=1)
    documents: list[str | TextDocument] = Field(
        min_length=1, description="Texts, or objects with a `text`."
    )
    top_n: int | None = Field(default=None, ge=1, description="Results to return (None: all).")
    return_documents: bool = Field(
        default=True, description="Include each result's `document` (Jina's default: true)."
    )


class JinaResult(BaseModel):
    index: int = Field(description="The document's position in the request.")
    document: TextDocument | None = Field(
        default=None, description="The document, when `return_documents`."
    )
    relevance_score: float = Field(description="sigmoid(logit), in [0, 1].")


class JinaUsage(BaseModel):
    total_tokens: int = Field(description="Tokens of the pairs the model read.")
    prompt_tokens: int = Field(description="The same (Jina reports both).")


class JinaRerankResponse(BaseModel):
    id: str
    model: str
    usage: JinaUsage
    results: list[JinaResult]


def build_jina_router(service: GatewayService) -> APIRouter:
    """`POST /v1/rerank` over `service`."""
    router = APIRouter(tags=["Jina / vLLM"])

    @router.post(
        "/v1/rerank",
        response_model=JinaRerankResponse,
        response_model_exclude_none=True,
        summary="Rerank (Jina, vLLM)",
        description="Jina's and vLLM's rerank. `relevance_score` = sigmoid(cross-encoder "
        "logit) in [0, 1], best first. Errors: `{error: {message, type, param, code}}`.",
    )
    async def rerank_v1(body: JinaRerankRequest) -> JinaRerankResponse:
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        ranked = await service.rerank("/v1/rerank", body.query, texts, top_n=body.top_n)
        tokens = await service.count_tokens(body.query, texts)
        return JinaRerankResponse(
            id=f"rerank-{uuid.uuid4().hex}",
            model=service.settings.reranker_model,
            usage=JinaUsage(total_tokens=tokens, prompt_tokens=tokens),
            results=[
                JinaResult(
                    index=r.index,
                    document=TextDocument(text=r.text) if body.return_documents else None,
                    relevance_score=sigmoid(r.logit),
                )
                for r in ranked
            ],
        )

    return router
