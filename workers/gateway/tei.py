"""text-embeddings-inference's `POST /rerank`.

Scores: `score` is the sigmoid of the cross-encoder's logit unless the request sets
`raw_scores: true`, then the logit itself (TEI's default and its option).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from rankstream.errors import InvalidRequestError
from rankstream.workers.gateway.service import GatewayService, sigmoid


class TeiRerankRequest(BaseModel):
    """TEI rerank request; other fields TEI defines are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1)
    texts: list[str] = Field(min_length=1)
    raw_scores: bool = Field(default=False, description="true: logits; false: sigmoid.")
    return_text: bool = Field(default=False, description="Include each result's `text`.")
    truncate: bool | None = Field(
        default=None,
        description="Accepted: rankstream always truncates pairs to the model's max_length.",
    )
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        default="Right", description="Only Right (keep a document's head) is supported."
    )


class TeiRank(BaseModel):
    index: int = Field(description="The text's position in the request.")
    text: str | None = Field(default=None, description="The text, when `return_text`.")
    score: float = Field(description="sigmoid(logit), or the logit with `raw_scores`.")


def build_tei_router(service: GatewayService) -> APIRouter:
    """`POST /rerank` over `service`."""
    router = APIRouter(tags=["text-embeddings-inference"])

    @router.post(
        "/rerank",
        response_model=list[TeiRank],
        response_model_exclude_none=True,
        summary="Rerank (text-embeddings-inference)",
        description="TEI's rerank: a list of `{index, score, text?}`, best first. `score` = "
        "sigmoid(logit) by default, the raw logit with `raw_scores: true`. More texts than "
        "RANKSTREAM_GATEWAY_MAX_TEXTS: 413. Errors: `{error, error_type, code}`.",
    )
    async def rerank(body: TeiRerankRequest) -> list[TeiRank]:
        if body.truncation_direction.lower() == "left":
            raise InvalidRequestError("truncation_direction Left is not supported: use Right")
        service.check_count(len(body.texts), "texts")
        ranked = await service.rerank("/rerank", body.query, body.texts)
        return [
            TeiRank(
                index=r.index,
                text=r.text if body.return_text else None,
                score=r.logit if body.raw_scores else sigmoid(r.logit),
            )
            for r in ranked
        ]

    return router
