"""text-embeddings-inference's `POST /rerank`, which also takes the Jina / vLLM shape.

A body with `texts` is TEI's: answered with TEI's list of `{index, score, text?}`. A body
with `documents` instead (what vLLM serves on `/rerank`, and what Jina's and vLLM's clients
post when pointed at it) is answered as `/v1/rerank` answers it. Errors come in TEI's shape
either way.

Scores: `score` is the sigmoid of the cross-encoder's logit unless the request sets
`raw_scores: true`, then the logit itself (TEI's default and its option).

`truncation_direction: Left` keeps each text's tail: the gateway cuts the text from the left
to the room the query leaves in the model's window (on a word boundary, with the reranker's
own tokenizer), so the rerank worker scores the tail whole.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rankstream.workers.gateway.cohere import CohereV1Response
from rankstream.workers.gateway.errors import Api
from rankstream.workers.gateway.jina import (
    Document,
    JinaRerankResponse,
    RerankV1Request,
    rerank_documents,
)
from rankstream.workers.gateway.openapi import error_responses
from rankstream.workers.gateway.service import GatewayService, check_unicode, sigmoid


class TeiRerankRequest(BaseModel):
    """TEI rerank request (`texts`), or the Jina / vLLM one (`documents`); other fields
    they define are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1)
    texts: list[str] | None = Field(
        default=None, description="TEI: the texts to rerank (none: an empty result)."
    )
    documents: list[Document] | None = Field(
        default=None,
        description="Instead of `texts`: the Jina / vLLM request, answered as `/v1/rerank`.",
    )
    raw_scores: bool = Field(default=False, description="true: logits; false: sigmoid.")
    return_text: bool = Field(default=False, description="Include each result's `text`.")
    truncate: bool | None = Field(
        default=None,
        description="Accepted: rankstream always truncates pairs to the model's max_length.",
    )
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        default="Right",
        description="Right keeps a text's head, Left its tail (the end of a long text).",
    )
    # The Jina / vLLM fields, with `documents`.
    model: str | None = None
    top_n: int | None = Field(default=None, ge=0, description="With `documents` (0: all).")
    return_documents: bool | None = Field(default=None, description="With `documents`.")

    @model_validator(mode="after")
    def _texts_or_documents(self) -> TeiRerankRequest:
        if self.texts is None and self.documents is None:
            raise ValueError(
                "send the texts to rerank as `texts` (TEI) or `documents` (Jina, vLLM)"
            )
        if self.texts is not None and self.documents is not None:
            raise ValueError("send `texts` (TEI) or `documents` (Jina, vLLM), not both")
        return self


class TeiRank(BaseModel):
    index: int = Field(description="The text's position in the request.")
    text: str | None = Field(default=None, description="The text, when `return_text`.")
    score: float = Field(description="sigmoid(logit), or the logit with `raw_scores`.")


def build_tei_router(service: GatewayService) -> APIRouter:
    """`POST /rerank` over `service`."""
    router = APIRouter(tags=["text-embeddings-inference"])

    @router.post(
        "/rerank",
        response_model=list[TeiRank] | JinaRerankResponse | CohereV1Response,
        response_model_exclude_none=True,
        responses=error_responses(Api.TEI, service.settings),
        summary="Rerank (text-embeddings-inference; Jina / vLLM with `documents`)",
        description="TEI's rerank: a list of `{index, score, text?}`, best first. `score` = "
        "sigmoid(logit) by default, the raw logit with `raw_scores: true`. "
        "`truncation_direction: Left` keeps each text's tail. Up to the gateway's document "
        "limit (1,000 by default); no texts, no results. A body with `documents` instead of "
        "`texts` is answered as `/v1/rerank` answers it (vLLM serves both on `/rerank`). "
        "Errors: `{error, error_type, code}`.",
    )
    async def rerank(body: TeiRerankRequest, request: Request) -> Any:
        if body.texts is None:
            assert body.documents is not None
            as_v1 = RerankV1Request(
                model=body.model,
                query=body.query,
                documents=body.documents,
                top_n=body.top_n,
                return_documents=body.return_documents,
            )
            return await rerank_documents(service, "/rerank", as_v1, as_v1.is_cohere(request))
        texts = body.texts
        service.check_count(len(texts), "texts")
        if body.truncation_direction.lower() == "left":
            check_unicode(body.query, "query")
            service.check_texts(texts, "texts")
            texts = await service.keep_tails(body.query, texts)
        ranked = await service.rerank("/rerank", body.query, texts, what="texts")
        return [
            TeiRank(
                index=r.index,
                text=body.texts[r.index] if body.return_text else None,
                score=r.logit if body.raw_scores else sigmoid(r.logit),
            )
            for r in ranked
        ]

    return router
