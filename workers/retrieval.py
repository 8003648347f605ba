"""Retrieval worker: query -> result cache -> embed (micro-batched) -> search (dense, BM25 or
hybrid) -> depth (`auto`: from the search's confidence) -> candidate set."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from faststream.nats import JStream

from rankstream.cache import cache_key, context_digest, normalise_query
from rankstream.errors import ExpiredError, InvalidRequestError
from rankstream.models.base import Embedder, Vectors
from rankstream.models.registry import load_embedder, scorer_model
from rankstream.ranking import ranked_result, retrieval_order
from rankstream.retrieval.fusion import SearchMode
from rankstream.retrieval.store import DocumentStore, Retriever, SearchResult
from rankstream.scheduling.adaptive_depth import (
    DepthPolicy,
    load_depth_policy,
    retrieval_features,
)
from rankstream.scheduling.batcher import BatchLimits, MicroBatcher, Ticket
from rankstream.scheduling.deadlines import Deadline
from rankstream.scheduling.limits import check_request
from rankstream.wire.filters import parse_filter
from rankstream.wire.messages import (
    AUTO,
    CachedAnswer,
    CacheTicket,
    Candidate,
    CandidateSet,
    QueryRequest,
    RankedResult,
    RetrievalReport,
    StageTimings,
    dedup_id,
    now_ms,
)
from rankstream.workers.context import WorkerContext
from rankstream.workers.delivery import work_queue_subscription
from rankstream.workers.model_runner import ModelRunner
from rankstream.workers.replies import ReplySender

WORKER = "retrieval"
# Tables other than the configured one a worker keeps open (the oldest is closed first).
MAX_OPEN_TABLES = 16


class RetrievalWorker:
    """The retrieval handler and what it holds: the query embedder, the store, the depth
    policy and the result cache.

    Args:
        context: settings (limits, batching, retrieval), broker (its subscriber and
            publisher are registered on it), metrics, and the cache looked up first.
        embedder: a loaded embedder; default: `load_embedder(settings)` in `start()`.
        store: what it searches; default: `DocumentStore.from_settings(settings)`. A
            request naming another `table` searches that table of `lancedb_uri`.
    """

    def __init__(
        self,
        context: WorkerContext,
        embedder: Embedder | None = None,
        store: Retriever | None = None,
    ) -> None:
        settings, metrics, broker = context.settings, context.metrics, context.broker
        self._settings, self._metrics, self._cache = settings, metrics, context.cache
        self._subjects = context.subjects
        self._replies = ReplySender(broker, self._subjects, WORKER, metrics)
        self._embedder = embedder
        self._store: Retriever = store or DocumentStore.from_settings(settings)
        self._other_stores: dict[str, Retriever] = {}
        self._policy: DepthPolicy = load_depth_policy(settings.auto_depth_policy)
        self._runner: ModelRunner[str, Vectors] | None = None
        broker.subscriber(
            **work_queue_subscription(
                settings,
                self._subjects.queries,
                self._subjects.streams.queries,
                self._subjects.durable("retrieval"),
            ),
            title="retrieval:queries",
            description="Query requests; each is looked up in the result cache, embedded, "
            "searched and forwarded.",
        )(self.handle)
        self._candidates = broker.publisher(
            self._subjects.candidates,
            stream=JStream(self._subjects.streams.candidates, declare=False),
            title="retrieval:candidates",
            description="Candidate sets for the rerank worker.",
            schema=CandidateSet,
        )

    @property
    def embedder(self) -> Embedder:
        assert self._embedder is not None, "start() the worker first"
        return self._embedder

    async def start(self) -> None:
        """Load the embedder (in a thread: it takes seconds) unless one was given, and start
        the embedding batcher and its model runner."""
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(load_embedder, self._settings)
        limits = BatchLimits(
            max_items=self._settings.max_embed_batch,
            max_padded_tokens=self._settings.max_embed_batch,
            max_wait_s=self._settings.max_embed_wait_ms / 1000,
        )
        batcher: MicroBatcher[str, Vectors] = MicroBatcher(
            limits, on_batch=self._metrics.observe_embed_batch
        )
        self._runner = ModelRunner(batcher, self._embed, "retrieval:embed")
        await self._runner.__aenter__()
        await asyncio.to_thread(self._embed, ["warm-up"])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.__aexit__(None, None, None)

    async def handle(self, request: QueryRequest) -> None:
        started = now_ms()
        with self._metrics.inflight_requests.labels(worker=WORKER).track_inprogress():
            await self._retrieve(request, started)

    async def _retrieve(self, request: QueryRequest, started: float) -> None:
        self._check(request)
        timings = StageTimings(queue_wait=max(0.0, started - request.created_at_ms))
        ticket = None
        if self._cache is not None and request.cache:
            lookup = time.perf_counter()
            ticket = await self._cache_ticket(request)
            answer = await self._cache.get(ticket.key)
            timings = timings.model_copy(update={"cache": _ms_since(lookup)})
            if answer is not None:
                await self._reply_cached(request, answer, timings)
                return
        mode = SearchMode(request.retrieval)
        vector = None
        if mode != SearchMode.BM25 or (ticket is not None and self._cache_is_semantic):
            embed_start = time.perf_counter()
            (vector,) = (await self._embedded([request.query])).outputs
            timings = timings.model_copy(update={"embed": _ms_since(embed_start)})
        if ticket is not None and vector is not None and self._cache is not None:
            lookup = time.perf_counter()
            answer = await self._cache.nearest(ticket.context, vector)
            timings = timings.model_copy(update={"cache": timings.cache + _ms_since(lookup)})
            if answer is not None:
                await self._reply_cached(request, answer, timings)
                return
            ticket = ticket.model_copy(update={"query_vector": [float(x) for x in vector]})
        await self._search_and_forward(request, vector, mode, timings, ticket)

    async def _search_and_forward(
        self,
        request: QueryRequest,
        vector: Vectors | None,
        mode: SearchMode,
        timings: StageTimings,
        ticket: CacheTicket | None,
    ) -> None:
        count = request.candidate_count(self._settings.max_auto_depth)
        search_start = time.perf_counter()
        store = await self._store_for(request)
        if request.filter is None:
            result = await store.search(request.query, vector, count, mode)
        else:
            where = parse_filter(request.filter)
            result = await store.search(request.query, vector, count, mode, where=where)
        timings = timings.model_copy(update={"search": _ms_since(search_start)})
        self._observe_search(result)
        report, first_depth = self._depth(request, result)
        candidate_set = CandidateSet(
            request=request,
            candidates=[
                Candidate(
                    doc_id=hit.doc_id,
                    text=hit.text,
                    retrieval_score=hit.score,
                    retrieval_rank=rank,
                    token_ids=list(hit.token_ids)
                    if hit.token_ids is not None and rank <= first_depth
                    else None,
                )
                for rank, hit in enumerate(result.hits, start=1)
            ],
            timings_ms=timings,
            embedder_model=self.embedder.model_id,
            retrieval=report,
            tokenizer=result.tokenizer,
            first_depth=first_depth,
            cache=ticket,
        )
        if first_depth == 0:
            order = retrieval_order(candidate_set.candidates)
            answer = ranked_result(candidate_set, order, timings, model_id="none")
            self._metrics.observe_timings(answer.timings_ms)
            await self._replies.answer(request, answer)
            await self._remember(ticket, answer)
            return
        await self._candidates.publish(
            candidate_set, headers={"Nats-Msg-Id": dedup_id(request.request_id, "candidates")}
        )
        self._metrics.requests.labels(worker=WORKER, outcome="forwarded").inc()

    def _depth(self, request: QueryRequest, result: SearchResult) -> tuple[RetrievalReport, int]:
        """The search's report, and the first stage's depth (`auto` resolved)."""
        features = retrieval_features(result.dense_scores, result.bm25_scores, result.overlap_at_10)
        stages = request.rerank_stages()
        report = RetrievalReport(
            mode=result.mode,
            dense_ms=result.dense_ms,
            bm25_ms=result.bm25_ms,
            table_version=result.table_version,
            features=features,
        )
        if not stages:
            self._metrics.rerank_depth.labels(policy="fixed").observe(0)
            return report, 0
        if stages[0].depth != AUTO:
            self._metrics.rerank_depth.labels(policy="fixed").observe(stages[0].depth)
            return report, int(stages[0].depth)
        depth, confidence = self._policy.choose(features, self._settings.max_auto_depth)
        self._metrics.rerank_depth.labels(policy="auto").observe(depth)
        chosen = report.model_copy(update={"chosen_depth": depth, "confidence": confidence})
        return chosen, depth

    def _observe_search(self, result: SearchResult) -> None:
        self._metrics.retrieval_requests.labels(mode=result.mode).inc()
        if result.mode != SearchMode.BM25:
            self._metrics.search_seconds.labels(list="dense").observe(result.dense_ms / 1000)
        if result.mode != SearchMode.DENSE:
            self._metrics.search_seconds.labels(list="bm25").observe(result.bm25_ms / 1000)

    @property
    def _cache_is_semantic(self) -> bool:
        return self._cache is not None and self._cache.semantic

    async def _cache_ticket(self, request: QueryRequest) -> CacheTicket:
        """Where this request's answer is (or will be) cached: everything the answer depends
        on, the table's current version included."""
        settings = self._settings
        stages = request.rerank_stages()
        store = await self._store_for(request)
        context = {
            "table": request.table or settings.table,
            "version": await store.version(),
            "filter": parse_filter(request.filter).sql if request.filter is not None else None,
            "embedder": self.embedder.model_id,
            "mode": request.retrieval,
            "fusion": [settings.hybrid_dense_weight, settings.hybrid_bm25_weight,
                       settings.hybrid_fusion_depth],
            "stages": [
                [scorer_model(settings, s.scorer), s.depth,
                 s.max_doc_tokens or settings.default_max_doc_tokens,
                 s.long_docs or settings.default_long_docs]
                for s in stages
            ],
            "max_length": settings.max_length,
            "maxp_windows": settings.maxp_max_windows,
            "auto": self._policy.to_json() if any(s.depth == AUTO for s in stages) else None,
            "max_auto_depth": settings.max_auto_depth,
            "top_k": request.top_k,
        }  # fmt: skip
        digest = context_digest(context)
        query = normalise_query(request.query)
        return CacheTicket(key=cache_key(query, digest), context=digest, query=query)

    async def _reply_cached(
        self, request: QueryRequest, answer: CachedAnswer, timings: StageTimings
    ) -> None:
        timings = timings.model_copy(update={"total": now_ms() - request.created_at_ms})
        result = RankedResult(
            request_id=request.request_id,
            query=request.query,
            results=answer.results,
            timings_ms=timings,
            batch_pairs=0,
            batch_requests=0,
            reranked=answer.reranked,
            model_id=answer.model_id,
            embedder_model=answer.embedder_model,
            stages=answer.stages,
            retrieval=answer.retrieval,
            cached=True,
        )
        self._metrics.observe_timings(timings)
        await self._replies.answer(request, result)

    async def _remember(self, ticket: CacheTicket | None, answer: RankedResult) -> None:
        if self._cache is None or ticket is None:
            return
        await self._cache.put(
            ticket.key,
            CachedAnswer(
                query=ticket.query,
                context=ticket.context,
                results=answer.results,
                reranked=0,
                model_id=answer.model_id,
                embedder_model=answer.embedder_model,
                retrieval=answer.retrieval,
                query_vector=ticket.query_vector,
            ),
        )

    async def _store_for(self, request: QueryRequest) -> Retriever:
        """The store of the table the request names (default: the configured one).

        Raises InvalidRequestError for a table that does not exist."""
        if request.table is None or request.table == self._settings.table:
            return self._store
        store = self._other_stores.get(request.table)
        if store is None:
            opened = DocumentStore.from_settings(self._settings, request.table)
            if not await asyncio.to_thread(opened.exists):
                raise InvalidRequestError(f"table {request.table!r} does not exist")
            if len(self._other_stores) >= MAX_OPEN_TABLES:
                self._other_stores.pop(next(iter(self._other_stores)))
            store = self._other_stores[request.table] = opened
        return store

    def _check(self, request: QueryRequest) -> None:
        check_request(request, self._settings)
        for stage in request.rerank_stages():
            scorer_model(self._settings, stage.scorer)  # an unknown scorer is refused here
        deadline = Deadline.of(request, self._settings.deadline_margin_ms)
        if deadline.passed():
            # Nothing retrieved yet, so nothing to degrade to: an `expired` error.
            self._metrics.deadline_misses.labels(worker=WORKER, action="expired").inc()
            raise ExpiredError(f"deadline passed {-deadline.remaining_s():.1f} s ago")

    async def _embedded(self, texts: list[str]) -> Ticket[Vectors]:
        assert self._runner is not None, "start() the worker first"
        return await self._runner.batcher.submit(texts, [1] * len(texts))

    def _embed(self, texts: list[str]) -> list[Vectors]:
        return list(np.asarray(self.embedder.embed_queries(texts)))


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
