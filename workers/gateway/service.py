"""What every route shares: the rankstream client, the limits, score transforms, and token
counts for the APIs' usage fields."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from pydantic import ValidationError

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import (
    ExpiredError,
    InvalidRequestError,
    QueryFailedError,
    RequestTooLargeError,
)
from rankstream.models.base import PairCodec
from rankstream.planning.admission import Planner
from rankstream.wire.contract import ErrorResult, RankedResult, RerankDocument
from rankstream.workers.gateway.metrics import GatewayMetrics


def sigmoid(logit: float) -> float:
    """A cross-encoder logit as a relevance score in [0, 1] (Cohere's and Jina's
    `relevance_score`, TEI's score unless `raw_scores`); stable for large |logit|."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    exp = math.exp(logit)
    return exp / (1.0 + exp)


@dataclass(frozen=True)
class Ranked:
    """One document of an answer: its position in the request, text and raw logit."""

    index: int
    text: str
    logit: float


@dataclass
class GatewayService:
    """The routes' access to the pipeline.

    Args:
        settings: the limits (`gateway_max_texts`, `max_depth`) and request defaults.
        client: a connected RankstreamClient; the gateway publishes through it.
        codec: the reranker's tokenizer, to count the tokens the `usage` fields report
            (None: usage counts are 0).
        metrics: where the documents of each rerank request are counted.
    """

    settings: Settings
    client: RankstreamClient
    codec: PairCodec | None = None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)

    @cached_property
    def planner(self) -> Planner:
        """The workers' admission bounds (and their profile), checked at the edge."""
        return Planner.from_settings(self.settings)

    @property
    def max_documents(self) -> int:
        return min(self.settings.gateway_max_texts, self.settings.max_depth)

    def check_count(self, count: int, what: str = "documents") -> None:
        """Raise RequestTooLargeError (413) when a request brings more documents than the
        gateway takes."""
        if count > self.max_documents:
            raise RequestTooLargeError(
                f"{count} {what}; at most {self.max_documents} per request "
                "(RANKSTREAM_GATEWAY_MAX_TEXTS, RANKSTREAM_MAX_DEPTH)",
            )

    async def rerank(
        self,
        route: str,
        query: str,
        texts: Sequence[str],
        *,
        top_n: int | None = None,
        max_doc_tokens: int | None = None,
        priority: int = 0,
    ) -> list[Ranked]:
        """Rerank `texts` for `query` through the rerank workers, best first.

        Args:
            route: the HTTP route asking (the `route` label of the documents histogram).

        Raises:
            RequestTooLargeError: too many texts (413).
            InvalidRequestError: a request the wire schema or the
                workers' limits refuse (a blank or over-long query, `top_n` over the
                documents a request may bring), refused here rather than dead-lettered by a
                worker (422).
            ExpiredError: the workers could not score the documents in time (504).
            QueryFailedError, QueryTimeoutError, RankstreamError: from the client; the
                routes turn them into API errors (errors.problem_for).
        """
        self.check_count(len(texts))
        if top_n is not None and top_n > self.max_documents:
            raise InvalidRequestError(
                f"top_n {top_n} is over the {self.max_documents} documents a request may "
                f"bring: ask for at most {self.max_documents}",
            )
        documents = [RerankDocument(text=t, id=str(i)) for i, t in enumerate(texts)]
        try:
            request = self.client.rerank_request(
                query, documents, top_n=top_n, max_doc_tokens=max_doc_tokens, priority=priority
            )
        except ValidationError as error:
            raise InvalidRequestError(_first_error(error)) from error
        self.planner.check_bounds(request)
        self.metrics.documents.labels(route=route).observe(len(texts))
        reply = await self.client.send(request)
        if isinstance(reply, ErrorResult):
            raise QueryFailedError(reply.code, reply.message, reply.worker)
        if reply.degraded:
            # Documents brought by the caller have no retrieval score to fall back on: a
            # degraded answer would be their input order under made-up scores.
            raise ExpiredError(
                f"the rerank workers could not score {len(texts)} documents within "
                f"{request.timeout_ms} ms (RANKSTREAM_DEFAULT_TIMEOUT_MS): send fewer or "
                "shorter documents, or raise the timeout",
            )
        return _ranked(reply, texts)

    async def count_tokens(
        self, query: str, texts: Sequence[str], max_doc_tokens: int | None = None
    ) -> int:
        """Tokens the pairs hold: query + document (cut to the budget and to `max_length`)
        + the special tokens, summed over the documents; 0 without a codec."""
        if self.codec is None or not texts:
            return 0
        return await asyncio.to_thread(self._count, self.codec, query, texts, max_doc_tokens)

    @staticmethod
    def _count(codec: PairCodec, query: str, texts: Sequence[str], budget: int | None) -> int:
        query_ids = codec.encode_query(query)
        room = codec.document_room(query_ids)
        if budget is not None:
            room = min(room, budget)
        specials = codec.max_length - len(query_ids) - codec.document_room(query_ids)
        return sum(
            len(query_ids) + specials + min(room, len(ids)) for ids in codec.encode_documents(texts)
        )


def _ranked(result: RankedResult, texts: Sequence[str]) -> list[Ranked]:
    """The answer's documents by their position in the request (their ids)."""
    return [Ranked(int(d.doc_id), texts[int(d.doc_id)], d.score) for d in result.results]


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
