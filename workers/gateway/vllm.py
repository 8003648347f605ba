"""vLLM's score API, `POST /score` and `POST /v1/score`: a score for each pair of texts.

    {"text_1": "query", "text_2": ["doc a", "doc b"]}        one query, N documents (1:N)
    {"text_1": ["q1", "q2"], "text_2": ["d1", "d2"]}          pairwise (N:N)
    {"text_1": "q", "text_2": "d"}                            one pair (1:1)

(`queries` / `documents` and `data_1` / `data_2` are vLLM's other spellings of the two
sides.) The answer is `data[i].score` for pair i, in the request's order (not ranked). Each
distinct query is one rerank request, so its pairs share the workers' model batches as any
rerank does.

Scores: the sigmoid of the cross-encoder's logit, in [0, 1] (vLLM's for a one-label
cross-encoder).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rankstream.errors import InvalidRequestError
from rankstream.workers.gateway.errors import Api
from rankstream.workers.gateway.openapi import error_responses
from rankstream.workers.gateway.service import GatewayService, sigmoid

Texts = str | list[str]
SPELLINGS = (("text_1", "text_2"), ("queries", "documents"), ("data_1", "data_2"))


class ScoreRequest(BaseModel):
    """vLLM's score request; its other fields are accepted and ignored (pairs are always
    cut to the model's window)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="Accepted and ignored: the workers' configured reranker."
    )
    text_1: Texts | None = Field(default=None, description="The query, or one per pair.")
    text_2: Texts | None = Field(default=None, description="The documents (one per pair).")
    queries: Texts | None = Field(default=None, description="Another spelling of text_1.")
    documents: Texts | None = Field(default=None, description="Another spelling of text_2.")
    data_1: Texts | None = Field(default=None, description="Another spelling of text_1.")
    data_2: Texts | None = Field(default=None, description="Another spelling of text_2.")

    @model_validator(mode="after")
    def _one_spelling(self) -> ScoreRequest:
        given = [pair for pair in SPELLINGS if getattr(self, pair[0]) is not None]
        if len(given) != 1 or getattr(self, given[0][1]) is None:
            raise ValueError(
                "send the two sides of the pairs as `text_1` and `text_2` (or `queries` and "
                "`documents`, or `data_1` and `data_2`): a string or a list of strings each"
            )
        return self

    def pairs(self) -> list[tuple[str, str]]:
        """The (query, document) pairs, in order: 1:1, 1:N or N:N as vLLM pairs them.

        Raises:
            InvalidRequestError: N:M with N > 1 and N != M.
        """
        first, second = next(pair for pair in SPELLINGS if getattr(self, pair[0]) is not None)
        left, right = _as_list(getattr(self, first)), _as_list(getattr(self, second))
        if len(left) == 1:
            return [(left[0], text) for text in right]
        if len(left) != len(right):
            raise InvalidRequestError(
                f"{first} has {len(left)} texts and {second} {len(right)}: pair one with many "
                f"(1:N) or as many with as many (N:N)"
            )
        return list(zip(left, right, strict=True))


def _as_list(texts: Texts | None) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts or [])


class ScoreData(BaseModel):
    index: int = Field(description="The pair's position in the request.")
    object: Literal["score"] = "score"
    score: float = Field(description="sigmoid(logit), in [0, 1].")


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


async def score(service: GatewayService, route: str, body: ScoreRequest) -> ScoreResponse:
    """Score `body`'s pairs: one rerank request per distinct query, all at once."""
    pairs = body.pairs()
    service.check_count(len(pairs), "pairs")
    service.check_texts([document for _, document in pairs], "text_2")
    by_query: dict[str, list[int]] = {}
    for index, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(index)

    async def one(query: str, indices: list[int]) -> tuple[list[int], dict[int, float], int]:
        texts = [pairs[i][1] for i in indices]
        ranked, tokens = await asyncio.gather(
            service.rerank(route, query, texts, what="text_2"),
            service.count_tokens(query, texts),
        )
        return indices, {r.index: r.logit for r in ranked}, tokens

    answers = await asyncio.gather(*(one(q, i) for q, i in by_query.items()))
    scores: dict[int, float] = {}
    total_tokens = 0
    for indices, logits, tokens in answers:
        total_tokens += tokens
        for position, index in enumerate(indices):
            scores[index] = sigmoid(logits[position])
    return ScoreResponse(
        id=f"score-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=service.settings.reranker_model,
        data=[ScoreData(index=i, score=scores[i]) for i in range(len(pairs))],
        usage=ScoreUsage(prompt_tokens=total_tokens, total_tokens=total_tokens),
    )


def build_vllm_router(service: GatewayService) -> APIRouter:
    """`POST /score` and `POST /v1/score` over `service`."""
    router = APIRouter(tags=["vLLM"])
    settings: dict[str, Any] = {
        "response_model": ScoreResponse,
        "responses": error_responses(Api.OPENAI, service.settings),
        "description": "vLLM's score API: `data[i].score` = sigmoid(cross-encoder logit) of "
        "pair i, in request order. Pairs 1:1, 1:N or N:N (`text_1`/`text_2`, or "
        "`queries`/`documents`, or `data_1`/`data_2`); up to the gateway's document limit. "
        "Errors: `{error: {message, type, param, code}}`.",
    }

    @router.post("/score", summary="Score pairs (vLLM)", operation_id="score", **settings)
    async def score_route(body: ScoreRequest) -> ScoreResponse:
        return await score(service, "/score", body)

    @router.post("/v1/score", summary="Score pairs (vLLM)", operation_id="score_v1", **settings)
    async def score_v1(body: ScoreRequest) -> ScoreResponse:
        return await score(service, "/v1/score", body)

    return router
