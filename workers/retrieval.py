"""Retrieval worker: query -> plan (admission) -> result cache -> embed (micro-batched) ->
search -> depth `auto` resolved -> candidate set (or, with nothing to rerank, the answer)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from faststream.nats import JStream
from nats.errors import MaxPayloadError

from rankstream.cache.store import CachedAnswer
from rankstream.errors import ExpiredError, InvalidRequestError, RequestTooLargeError
from rankstream.models.base import Embedder, Vectors
from rankstream.models.registry import load_embedder
from rankstream.planning.adaptive_depth import retrieval_features
from rankstream.planning.admission import Planner
from rankstream.planning.plan import QueryPlan, RetrievalPlan
from rankstream.ranking import ranked_result, retrieval_order
from rankstream.retrieval.fusion import SearchMode
from rankstream.retrieval.store import DEFAULT_FUSION, DocumentStore, Retriever, SearchResult
from rankstream.scheduling.batcher import BatchLimits, MicroBatcher, Ticket
from rankstream.scheduling.deadlines import Deadline
from rankstream.wire.contract import QueryRequest, RetrievalReport, StageTimings, now_ms
from rankstream.wire.filters import parse_filter
from rankstream.wire.handoff import Candidate, CandidateSet, dedup_id
from rankstream.workers.context import WorkerContext
from rankstream.workers.delivery import work_queue_subscription
from rankstream.workers.model_runner import ModelRunner
from rankstream.workers.replies import PUBACK_TIMEOUT_S, ReplySender, publish_until_confirmed

WORKER = "retrieval"
# Tables other than the configured one a worker keeps open (the oldest is closed first).
MAX_OPEN_TABLES = 16


class RetrievalWorker:
    """The retrieval handler and what it holds: the query embedder, the store, the planner
    (with the depth policy) and the result cache.

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
        self._replies = ReplySender(broker, self._subjects, WORKER, metrics, context.cache)
        self._embedder = embedder
        self._store: Retriever = store or DocumentStore.from_settings(settings)
        self._other_stores: dict[str, Retriever] = {}
        self._planner = Planner.from_settings(settings)
        self._runner: ModelRunner[str, Vectors] | None = None
        broker.subscriber(
            **work_queue_subscription(
                settings,
                self._subjects.queries,
                self._subjects.streams.queries,
                self._subjects.durable("retrieval"),
            ),
            title="retrieval:queries",
            description="Query requests; each is planned, looked up in the result cache, "
            "embedded, searched and forwarded.",
        )(self.handle)
        self._candidates = broker.publisher(
            self._subjects.candidates,
            stream=JStream(self._subjects.streams.candidates, declare=False),
            title="retrieval:candidates",
            description="Candidate sets, each carrying its plan, for the rerank worker.",
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
        received = now_ms()
        with self._metrics.inflight_requests.labels(worker=WORKER).track_inprogress():
            plan, store = await self._admit(request, received)
            timings = StageTimings(queue_wait=max(0.0, received - plan.created_at_ms))
            await self._retrieve(plan, store, timings)

    async def _admit(
        self, request: QueryRequest, received_ms: float
    ) -> tuple[QueryPlan, Retriever]:
        """The request's plan and the store it searches.

        Raises:
            InvalidRequestError: a bound is broken, or the table does not exist.
            ExpiredError: its deadline passed before it was received.
        """
        store = await self._store_for(request.table)
        plan = self._planner.plan_query(
            request,
            received_at_ms=received_ms,
            embedder_model=self.embedder.model_id,
            table_version=await store.version() if request.cache and self._cache else None,
        )
        deadline = Deadline.of(plan, self._settings.deadline_margin_ms)
        if deadline.passed():
            # Nothing retrieved yet, so nothing to degrade to: an `expired` error.
            self._metrics.deadline_misses.labels(worker=WORKER, action="expired").inc()
            raise ExpiredError(f"deadline passed {-deadline.remaining_s():.1f} s ago")
        return plan, store

    async def _retrieve(self, plan: QueryPlan, store: Retriever, timings: StageTimings) -> None:
        assert plan.retrieval is not None, "a query plan always retrieves"
        if plan.cache is not None and self._cache is not None:
            lookup = time.perf_counter()
            answer = await self._cache.get(plan.cache.key)
            timings = timings.model_copy(update={"cache": _ms_since(lookup)})
            if answer is not None:
                await self._reply_cached(plan, answer, timings)
                return
        mode = SearchMode(plan.retrieval.mode)
        vector = None
        if mode != SearchMode.BM25 or (plan.cache is not None and self._cache_is_semantic):
            embed_start = time.perf_counter()
            (vector,) = (await self._embedded([plan.query])).outputs
            timings = timings.model_copy(update={"embed": _ms_since(embed_start)})
        if plan.cache is not None and vector is not None and self._cache is not None:
            lookup = time.perf_counter()
            answer = await self._cache.nearest(plan.cache.context, vector)
            timings = timings.model_copy(update={"cache": timings.cache + _ms_since(lookup)})
            if answer is not None:
                await self._reply_cached(plan, answer, timings)
                return
        await self._search_and_forward(plan, store, vector, timings)

    async def _search_and_forward(
        self, plan: QueryPlan, store: Retriever, vector: Vectors | None, timings: StageTimings
    ) -> None:
        search_start = time.perf_counter()
        result = await _search(store, plan.retrieval, plan.query, vector)
        timings = timings.model_copy(update={"search": _ms_since(search_start)})
        self._observe_search(result)
        plan, report = self._resolve_depth(plan, result)
        first_depth = plan.first_depth
        candidate_set = CandidateSet(
            plan=plan,
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
            query_vector=[float(x) for x in vector]
            if vector is not None and plan.cache is not None and self._cache_is_semantic
            else None,
        )
        if first_depth == 0:
            answer = ranked_result(
                candidate_set, retrieval_order(candidate_set.candidates), timings, model_id="none"
            )
            self._metrics.observe_timings(answer.timings_ms)
            await self._replies.answer(plan, answer, candidate_set.query_vector)
            return
        await self._forward(candidate_set)

    async def _forward(self, candidate_set: CandidateSet) -> None:
        """Publish the candidate set for the rerank worker, asking again while JetStream does
        not confirm it (not failing the request, which would embed and search it again).

        Raises:
            RequestTooLargeError: the candidate set is over the server's max_payload.
        """
        plan = candidate_set.plan
        try:
            await publish_until_confirmed(
                lambda: self._candidates.publish(
                    candidate_set,
                    headers={"Nats-Msg-Id": dedup_id(plan.request_id, "candidates")},
                    timeout=PUBACK_TIMEOUT_S,
                ),
                f"{WORKER}: the candidate set of {plan.request_id}",
            )
        except MaxPayloadError as error:
            raise RequestTooLargeError(
                f"{len(candidate_set.candidates)} candidates do not fit in one NATS message "
                f"({error}): ask for a smaller depth or top_k, or raise the server's "
                "max_payload with RANKSTREAM_MAX_MESSAGE_BYTES"
            ) from error
        self._metrics.requests.labels(worker=WORKER, outcome="forwarded").inc()

    def _resolve_depth(
        self, plan: QueryPlan, result: SearchResult
    ) -> tuple[QueryPlan, RetrievalReport]:
        """The plan with depth `auto` resolved from the search's confidence, and the
        search's report."""
        features = retrieval_features(result.dense_scores, result.bm25_scores, result.overlap_at_10)
        fusion = plan.retrieval.fusion if plan.retrieval is not None else None
        report = RetrievalReport(
            mode=result.mode,
            fusion_weight=fusion.dense_weight if fusion and fusion.method == "convex" else None,
            dense_ms=result.dense_ms,
            bm25_ms=result.bm25_ms,
            table_version=result.table_version,
            features=features,
        )
        if not plan.stages or not plan.stages[0].auto:
            self._metrics.rerank_depth.labels(policy="fixed").observe(plan.first_depth)
            return plan, report
        assert self._planner.depth_policy is not None, "the planner refuses `auto` without one"
        depth, confidence = self._planner.depth_policy.choose(features, plan.stages[0].depth)
        self._metrics.rerank_depth.labels(policy="auto").observe(depth)
        chosen = report.model_copy(update={"chosen_depth": depth, "confidence": confidence})
        return plan.with_first_depth(depth), chosen

    def _observe_search(self, result: SearchResult) -> None:
        self._metrics.retrieval_requests.labels(mode=result.mode).inc()
        if result.mode != SearchMode.BM25:
            self._metrics.search_seconds.labels(list="dense").observe(result.dense_ms / 1000)
        if result.mode != SearchMode.DENSE:
            self._metrics.search_seconds.labels(list="bm25").observe(result.bm25_ms / 1000)

    @property
    def _cache_is_semantic(self) -> bool:
        return self._cache is not None and self._cache.semantic

    async def _reply_cached(
        self, plan: QueryPlan, answer: CachedAnswer, timings: StageTimings
    ) -> None:
        timings = timings.model_copy(update={"total": now_ms() - plan.created_at_ms})
        self._metrics.observe_timings(timings)
        replayed = answer.as_result(plan.request_id, plan.query, timings, plan.profile)
        await self._replies.answer(plan, replayed)

    async def _store_for(self, table: str | None) -> Retriever:
        """The store of `table` (default: the configured one).

        Raises InvalidRequestError for a table that does not exist."""
        if table is None or table == self._settings.table:
            return self._store
        store = self._other_stores.get(table)
        if store is None:
            opened = DocumentStore.from_settings(self._settings, table)
            if not await asyncio.to_thread(opened.exists):
                raise InvalidRequestError(f"table {table!r} does not exist")
            if len(self._other_stores) >= MAX_OPEN_TABLES:
                self._other_stores.pop(next(iter(self._other_stores)))
            store = self._other_stores[table] = opened
        return store

    async def _embedded(self, texts: list[str]) -> Ticket[Vectors]:
        assert self._runner is not None, "start() the worker first"
        return await self._runner.batcher.submit(texts, [1] * len(texts))

    def _embed(self, texts: list[str]) -> list[Vectors]:
        return list(np.asarray(self.embedder.embed_queries(texts)))


async def _search(
    store: Retriever, retrieval: RetrievalPlan | None, query: str, vector: Vectors | None
) -> SearchResult:
    """Execute the plan's retrieval step on `store`."""
    assert retrieval is not None, "a query plan always retrieves"
    mode = SearchMode(retrieval.mode)
    where = parse_filter(retrieval.filter) if retrieval.filter is not None else None
    fusion = retrieval.fusion or DEFAULT_FUSION
    return await store.search(query, vector, retrieval.count, mode, where=where, fusion=fusion)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
