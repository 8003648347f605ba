"""text-embeddings-inference's `POST /rerank` (which also takes the Jina / vLLM shape) and
`GET /info` (TEI's clients read the model type there before they rerank).

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

from rankstream import __version__
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


class TeiInfo(BaseModel):
    """TEI's `GET /info`: what its clients read before they call (tei-client checks that
    `model_type` is a reranker). TEI's fields with no rankstream meaning are null."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict[str, dict[str, dict[str, Any]]]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None = None
    max_client_batch_size: int
    tokenization_workers: int | None = None
    version: str
    sha: str | None = None
    docker_label: str | None = None


def tei_info(service: GatewayService) -> TeiInfo:
    """The gateway's reranker, described as TEI describes its model."""
    settings = service.settings
    model = settings.reranker_model
    return TeiInfo(
        model_id=model,
        model_dtype="int8" if model.endswith("int8") else "float32",
        model_type={"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
        max_concurrent_requests=settings.max_inflight_pairs,
        max_input_length=settings.max_length,
        max_batch_tokens=settings.max_batch_tokens,
        max_client_batch_size=service.max_documents,
        version=__version__,
    )


def build_tei_router(service: GatewayService) -> APIRouter:
    """`POST /rerank` and `GET /info` over `service`."""
    router = APIRouter(tags=["text-embeddings-inference"])

    @router.get(
        "/info",
        response_model=TeiInfo,
        responses=error_responses(Api.TEI, service.settings, statuses=()),
        summary="The reranker, in TEI's shape",
        description="TEI's `/info`: `model_type` says reranker, `max_client_batch_size` is "
        "the most texts `/rerank` takes.",
    )
    async def info() -> TeiInfo:
        return tei_info(service)

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
