"""Retrieval worker: query -> embed (micro-batched) -> LanceDB search -> candidate set."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from faststream.nats import JStream, NatsBroker

from shared.batching import BatchLimits, MicroBatcher
from shared.config import Settings
from shared.errors import ExpiredError
from shared.limits import check_request
from shared.messages import (
    Candidate,
    CandidateSet,
    QueryRequest,
    StageTimings,
    dedup_id,
    now_ms,
)
from shared.metrics import (
    DEADLINE_MISSES,
    INFLIGHT_REQUESTS,
    REQUESTS,
    observe_embed_batch,
    observe_timings,
)
from shared.models import Embedder, load_embedder
from shared.models.base import Vectors
from shared.ranking import ranked_result
from shared.store import DocumentStore
from shared.subjects import Subjects
from workers.broker import work_queue_subscription
from workers.replies import ReplySender

WORKER = "retrieval"


class RetrievalWorker:
    def __init__(self, settings: Settings, broker: NatsBroker) -> None:
        self._settings = settings
        self._subjects = Subjects(settings.subject_prefix)
        self._replies = ReplySender(broker, self._subjects, WORKER)
        self._embedder: Embedder | None = None
        self._store = DocumentStore(settings.lancedb_uri, settings.table, settings.ann_min_rows)
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

    async def start(self) -> None:
        """Load the model (in a thread: it takes seconds) and start the embedding batcher."""
        self._embedder = await asyncio.to_thread(load_embedder, self._settings)
        limits = BatchLimits(
            max_items=self._settings.max_embed_batch,
            max_padded_tokens=self._settings.max_embed_batch,
            max_wait_s=self._settings.max_embed_wait_ms / 1000,
        )
        self._batcher = MicroBatcher(self._embed, limits, on_batch=observe_embed_batch)
        await self._batcher.__aenter__()
        await self._embed(["warm-up"])

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.__aexit__(None, None, None)

    async def handle(self, request: QueryRequest) -> None:
        started = now_ms()
        with INFLIGHT_REQUESTS.labels(worker=WORKER).track_inprogress():
            await self._retrieve(request, started)

    async def _retrieve(self, request: QueryRequest, started: float) -> None:
        self._check(request, started)
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
            embedder_model=self._embedder_id,
        )
        if request.depth == 0:
            result = ranked_result(candidate_set, [], timings, model_id="none")
            observe_timings(result.timings_ms)
            await self._replies.send(request.reply_to, result)
            return
        await self._candidates.publish(
            candidate_set, headers={"Nats-Msg-Id": dedup_id(request.request_id, "candidates")}
        )
        REQUESTS.labels(worker=WORKER, outcome="forwarded").inc()

    def _check(self, request: QueryRequest, started: float) -> None:
        check_request(request, self._settings)
        if started > request.deadline_ms:
            # Nothing retrieved yet, so nothing to degrade to: an `expired` error.
            DEADLINE_MISSES.labels(worker=WORKER, action="expired").inc()
            raise ExpiredError(f"deadline passed {started - request.deadline_ms:.0f} ms ago")

    @property
    def _embedder_id(self) -> str:
        return self._embedder.model_id if self._embedder else self._settings.embedder_model

    async def _embed(self, texts: list[str]) -> list[Vectors]:
        assert self._embedder is not None
        vectors = await asyncio.to_thread(self._embedder.embed_queries, texts)
        return list(np.asarray(vectors))
