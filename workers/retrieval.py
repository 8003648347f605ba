"""Retrieval worker: query -> embed (micro-batched) -> LanceDB search -> candidate set."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from faststream.nats import JStream, NatsBroker

from rankstream.config import Settings
from rankstream.errors import ExpiredError
from rankstream.metrics import Metrics
from rankstream.models import Embedder, load_embedder
from rankstream.models.base import Vectors
from rankstream.ranking import ranked_result
from rankstream.retrieval.store import DocumentStore, Retriever
from rankstream.scheduling.batcher import BatchLimits, MicroBatcher
from rankstream.scheduling.deadlines import Deadline
from rankstream.scheduling.limits import check_request
from rankstream.wire.messages import (
    Candidate,
    CandidateSet,
    QueryRequest,
    StageTimings,
    dedup_id,
    now_ms,
)
from rankstream.wire.subjects import Subjects
from rankstream.workers.delivery import work_queue_subscription
from rankstream.workers.replies import ReplySender

WORKER = "retrieval"


class RetrievalWorker:
    """The retrieval handler and what it holds: the query embedder and the store.

    Args:
        settings: limits, batching and store settings.
        broker: the broker its subscriber and publisher are registered on.
        metrics: where it reports.
        embedder: a loaded embedder; default: `load_embedder(settings)` in `start()`.
        store: what it searches; default: `DocumentStore.from_settings(settings)`.
    """

    def __init__(
        self,
        settings: Settings,
        broker: NatsBroker,
        metrics: Metrics,
        embedder: Embedder | None = None,
        store: Retriever | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._subjects = Subjects.from_settings(settings)
        self._replies = ReplySender(broker, self._subjects, WORKER, metrics)
        self._embedder = embedder
        self._store: Retriever = store or DocumentStore.from_settings(settings)
        self._batcher: MicroBatcher[str, Vectors] | None = None
        broker.subscriber(
            **work_queue_subscription(
                settings,
                self._subjects.queries,
                self._subjects.queries_stream,
                self._subjects.retrieval_durable,
            ),
            title="retrieval:queries",
            description="Query requests; each is embedded, searched and forwarded.",
        )(self.handle)
        self._candidates = broker.publisher(
            self._subjects.candidates,
            stream=JStream(self._subjects.candidates_stream, declare=False),
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
        the embedding batcher."""
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(load_embedder, self._settings)
        limits = BatchLimits(
            max_items=self._settings.max_embed_batch,
            max_padded_tokens=self._settings.max_embed_batch,
            max_wait_s=self._settings.max_embed_wait_ms / 1000,
        )
        self._batcher = MicroBatcher(
            self._embed, limits, on_batch=self._metrics.observe_embed_batch
        )
        await self._batcher.__aenter__()
        await self._embed(["warm-up"])

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.__aexit__(None, None, None)

    async def handle(self, request: QueryRequest) -> None:
        started = now_ms()
        with self._metrics.inflight_requests.labels(worker=WORKER).track_inprogress():
            await self._retrieve(request, started)

    async def _retrieve(self, request: QueryRequest, started: float) -> None:
        self._check(request)
        assert self._batcher is not None, "start() the worker first"
        embed_start = time.perf_counter()
        (vector,) = (await self._batcher.submit([request.query], [1])).outputs
        search_start = time.perf_counter()
        hits = await self._store.search(vector, request.candidate_count)
        search_end = time.perf_counter()
        timings = StageTimings(
            queue_wait=max(0.0, started - request.created_at_ms),
            embed=(search_start - embed_start) * 1000,
            search=(search_end - search_start) * 1000,
        )
        candidate_set = CandidateSet(
            request=request,
            candidates=[
                Candidate(doc_id=h.doc_id, text=h.text, retrieval_score=h.score, retrieval_rank=i)
                for i, h in enumerate(hits, start=1)
            ],
            timings_ms=timings,
            embedder_model=self.embedder.model_id,
        )
        if request.depth == 0:
            result = ranked_result(candidate_set, [], timings, model_id="none")
            self._metrics.observe_timings(result.timings_ms)
            await self._replies.send(request.reply_to, result)
            return
        await self._candidates.publish(
            candidate_set, headers={"Nats-Msg-Id": dedup_id(request.request_id, "candidates")}
        )
        self._metrics.requests.labels(worker=WORKER, outcome="forwarded").inc()

    def _check(self, request: QueryRequest) -> None:
        check_request(request, self._settings)
        deadline = Deadline.of(request, self._settings.deadline_margin_ms)
        if deadline.passed():
            # Nothing retrieved yet, so nothing to degrade to: an `expired` error.
            self._metrics.deadline_misses.labels(worker=WORKER, action="expired").inc()
            raise ExpiredError(f"deadline passed {-deadline.remaining_s():.1f} s ago")

    async def _embed(self, texts: list[str]) -> list[Vectors]:
        vectors = await asyncio.to_thread(self.embedder.embed_queries, texts)
        return list(np.asarray(vectors))
