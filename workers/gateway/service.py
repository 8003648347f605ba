"""What every route shares: the rankstream client, the limits, score transforms, how long
documents are cut or chunked, and token counts for the APIs' usage fields."""

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
from rankstream.models.tokenization import PairTokenizer
from rankstream.planning.admission import Planner
from rankstream.wire.contract import (
    ErrorResult,
    LongDocuments,
    RankedResult,
    RerankDocument,
    RerankStage,
)
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


@dataclass(frozen=True)
class Budget:
    """How a route's documents meet the model's window: `max_doc_tokens` a pair gives a
    document and what happens to one over it (`long_docs`: `head`, `maxp`, `best`); None
    for either: the workers' defaults (RANKSTREAM_DEFAULT_MAX_DOC_TOKENS, _LONG_DOCS)."""

    max_doc_tokens: int | None = None
    long_docs: LongDocuments | None = None

    @property
    def is_default(self) -> bool:
        return self.max_doc_tokens is None and self.long_docs is None


@dataclass
class GatewayService:
    """The routes' access to the pipeline.

    Args:
        settings: the limits (`gateway_max_texts`, `max_depth`, the request pair cap) and
            request defaults.
        client: a connected RankstreamClient; the gateway publishes through it.
        codec: the reranker's tokenizer, to count the tokens the `usage` fields report and
            to cut documents from the left (None: usage counts are 0, no left cuts).
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
        """Documents one rerank request may bring: `gateway_max_texts` (None: no limit of
        the gateway's own), `max_depth`, and the pairs a request may have scored (a
        document is at least one pair)."""
        settings = self.settings
        limits = [settings.max_depth, settings.request_pair_cap]
        if settings.gateway_max_texts is not None:
            limits.append(settings.gateway_max_texts)
        return min(limits)

    def _limit_names(self) -> str:
        """The settings that bound `max_documents`, as their environment variables."""
        settings, limit = self.settings, self.max_documents
        names = [
            name
            for name, value in (
                ("RANKSTREAM_GATEWAY_MAX_TEXTS", settings.gateway_max_texts),
                ("RANKSTREAM_MAX_DEPTH", settings.max_depth),
                ("RANKSTREAM_MAX_REQUEST_PAIRS", settings.request_pair_cap),
            )
            if value == limit
        ]
        return ", ".join(names)

    def check_count(self, count: int, what: str = "documents") -> None:
        """Raise RequestTooLargeError (413) when a request brings more documents than the
        gateway takes."""
        if count > self.max_documents:
            raise RequestTooLargeError(
                f"{count} {what}; at most {self.max_documents} per request "
                f"({self._limit_names()}): send fewer, or raise the limit",
            )

    def check_top_n(self, top_n: int | None, name: str = "top_n") -> None:
        if top_n is not None and top_n > self.max_documents:
            raise InvalidRequestError(
                f"{name} {top_n} is over the {self.max_documents} documents a request may "
                f"bring: ask for at most {self.max_documents}",
            )

    @staticmethod
    def check_texts(texts: Sequence[str], what: str = "documents") -> None:
        """Raise InvalidRequestError (422) naming the first empty document, or the first
        that is not text (a lone surrogate such as `\\udfff`, which JSON can carry and no
        encoding can)."""
        for index, text in enumerate(texts):
            if not text:
                raise InvalidRequestError(
                    f"{what}[{index}] is empty: every document needs text to be ranked "
                    "(leave it out, or send its text)"
                )
            check_unicode(text, f"{what}[{index}]")

    def chunked(self, count: int, max_tokens: int | None = None) -> Budget:
        """Cohere's long documents: scored by their best chunk. A document over the room the
        query leaves is split into windows of that room, half-overlapping, at most
        RANKSTREAM_MAXP_MAX_WINDOWS of them, each scored, the best kept (`maxp`), while
        `count` documents of that many windows fit the request pair cap; past it (e.g.
        1,000 documents x 4 windows > 2,048 pairs), the one window holding the most of the
        query's tokens is scored (`best`: one pair a document, as cheap as a cut).
        `max_tokens` (Cohere v2's `max_tokens_per_doc`) at most the model's max_length cuts
        each document to that many tokens instead, as Cohere does: one chunk."""
        settings = self.settings
        if max_tokens is not None and max_tokens <= settings.max_length:
            return Budget(max_tokens, "head")
        fits = count * settings.maxp_max_windows <= settings.request_pair_cap
        return Budget(None, "maxp" if fits else "best")

    async def keep_tails(
        self, query: str, texts: Sequence[str], max_tokens: int | None = None
    ) -> list[str]:
        """`texts` cut from the left to the room `query` leaves them (TEI's
        `truncation_direction: Left`): the rerank worker then scores each tail whole.
        Unchanged without the reranker's tokenizer."""
        if not isinstance(self.codec, PairTokenizer) or not texts:
            return list(texts)
        return await asyncio.to_thread(self.codec.keep_tails, query, texts, max_tokens)

    async def rerank(
        self,
        route: str,
        query: str,
        texts: Sequence[str],
        *,
        top_n: int | None = None,
        budget: Budget = Budget(),
        priority: int = 0,
        what: str = "documents",
    ) -> list[Ranked]:
        """Rerank `texts` for `query` through the rerank workers, best first; no texts, no
        results (the query is still checked).

        Args:
            route: the HTTP route asking (the `route` label of the documents histogram).
            budget: how documents over the model's window are cut or chunked.
            what: what the route calls its documents (`texts`, `text_2`), for messages.

        Raises:
            RequestTooLargeError: too many texts (413).
            InvalidRequestError: an empty text, or a request the wire schema or the
                workers' limits refuse (a blank or over-long query, `top_n` over the
                documents a request may bring), refused here rather than dead-lettered by a
                worker (422).
            ExpiredError: the workers could not score the documents in time (504).
            QueryFailedError, QueryTimeoutError, RankstreamError: from the client; the
                routes turn them into API errors (errors.problem_for).
        """
        self.check_count(len(texts), what)
        self.check_top_n(top_n)
        check_unicode(query, "query")
        self.check_texts(texts, what)
        # No documents: Cohere answers an empty result. The query is checked as it would be
        # with documents (one stands in; nothing is sent).
        documents = [RerankDocument(text=t, id=str(i)) for i, t in enumerate(texts)] or [
            RerankDocument(text="-")
        ]
        stages = (
            []
            if budget.is_default
            else [
                RerankStage(
                    depth=len(documents),
                    max_doc_tokens=budget.max_doc_tokens,
                    long_docs=budget.long_docs,
                )
            ]
        )
        try:
            request = self.client.rerank_request(
                query, documents, top_n=top_n, stages=stages, priority=priority
            )
        except ValidationError as error:
            raise InvalidRequestError(_first_error(error)) from error
        self.planner.check_bounds(request)
        if not texts:
            return []
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


def check_unicode(text: str, where: str) -> None:
    """Raise InvalidRequestError when `text` holds a lone surrogate (it has no UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = error.object[error.start : error.end].encode("unicode_escape").decode()
        raise InvalidRequestError(
            f"{where} is not valid text: it holds {bad}, half of a UTF-16 surrogate pair; "
            "send Unicode text"
        ) from None


def _ranked(result: RankedResult, texts: Sequence[str]) -> list[Ranked]:
    """The answer's documents by their position in the request (their ids)."""
    return [Ranked(int(d.doc_id), texts[int(d.doc_id)], d.score) for d in result.results]


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
