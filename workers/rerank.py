"""Rerank worker: candidate set -> admission (pair budget) -> micro-batcher (pairs pooled
across requests, grouped by length) -> cross-encoder -> ranked result to the requester."""

from __future__ import annotations

import asyncio
import logging
import time

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from shared.admission import PairBudget
from shared.batching import DeadlineExceededError, Ticket
from shared.config import Settings
from shared.errors import ExpiredError
from shared.limits import check_candidates
from shared.messages import CandidateSet, RankedResult, StageTimings, now_ms
from shared.metrics import (
    DEADLINE_MISSES,
    INFLIGHT_REQUESTS,
    RERANK_INFLIGHT_PAIRS,
    RERANK_QUEUED_PAIRS,
    observe_rerank_batch,
    observe_timings,
)
from shared.models import CrossEncoderBackend, Pair, load_cross_encoder
from shared.ranking import ranked_result
from shared.subjects import Subjects
from workers.broker import work_queue_subscription
from workers.heartbeat import in_progress_heartbeats
from workers.pair_scheduler import PairScheduler
from workers.replies import ReplySender

log = logging.getLogger(__name__)

WORKER = "rerank"
WARM_UP_LENGTHS = (16, 64, 128, 256, 512)


class RerankWorker:
    def __init__(self, settings: Settings, broker: NatsBroker) -> None:
        self._settings = settings
        self._subjects = Subjects(settings.subject_prefix)
        self._replies = ReplySender(broker, self._subjects, WORKER)
        self._scheduler: PairScheduler | None = None
        self._budget = PairBudget(settings.max_inflight_pairs)
        RERANK_INFLIGHT_PAIRS.set_function(lambda: self._budget.held)
        RERANK_QUEUED_PAIRS.set_function(
            lambda: self._scheduler.queued_pairs if self._scheduler else 0
        )
        broker.subscriber(
            **work_queue_subscription(
                settings,
                self._subjects.candidates,
                self._subjects.candidates_stream,
                self._subjects.rerank_durable,
            ),
            title="rerank:candidates",
            description="Candidate sets; their pairs are scored in batches shared across "
            "requests and the ranked result is sent to the request's reply_to.",
        )(self.handle)

    @property
    def model(self) -> CrossEncoderBackend:
        assert self._scheduler is not None, "start() the worker first"
        return self._scheduler.model

    async def start(self) -> None:
        """Load the cross-encoder (in a thread), warm it up over the shapes it will see,
        then start the scheduler."""
        model = await asyncio.to_thread(load_cross_encoder, self._settings)
        await asyncio.to_thread(self._warm_up, model)
        scheduler = PairScheduler(model, self._settings, observe_rerank_batch)
        await scheduler.__aenter__()
        self._scheduler = scheduler

    def _warm_up(self, model: CrossEncoderBackend) -> None:
        """First calls allocate buffers and pick kernels; pay that before reporting ready."""
        for length in WARM_UP_LENGTHS:
            if length > model.max_length:
                break
            pair = ("warm up", " ".join(["passage"] * length))
            batch = max(
                1, min(self._settings.max_batch_pairs, self._settings.max_batch_tokens // length)
            )
            for size in sorted({1, batch}):
                model.score([pair] * size)

    async def stop(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.__aexit__(None, None, None)

    async def handle(self, candidate_set: CandidateSet, message: NatsMessage) -> None:
        started = now_ms()
        request = candidate_set.request
        with INFLIGHT_REQUESTS.labels(worker=WORKER).track_inprogress():
            async with in_progress_heartbeats(message, self._settings.ack_wait_s / 3):
                reply = await self._rerank(candidate_set, started)
            observe_timings(reply.timings_ms)
            await self._replies.send(request.reply_to, reply)

    async def _rerank(self, candidate_set: CandidateSet, started: float) -> RankedResult:
        request = candidate_set.request
        check_candidates(candidate_set, self._settings)
        timings = candidate_set.timings_ms.model_copy(
            update={"rerank_queue_wait": max(0.0, started - candidate_set.published_at_ms)}
        )
        if started > request.deadline_ms:
            return self._missed_deadline(candidate_set, timings)
        pairs = [(request.query, c.text) for c in candidate_set.candidates[: request.depth]]
        async with self._budget.hold(len(pairs)):
            try:
                ticket = await self._submit(pairs, request.deadline_ms)
            except DeadlineExceededError:
                return self._missed_deadline(candidate_set, timings)
        timings = timings.model_copy(
            update={
                "batch_wait": ticket.batch_wait_s * 1000,
                "inference": ticket.inference_s * 1000,
            }
        )
        return ranked_result(
            candidate_set,
            ticket.outputs,
            timings,
            self.model.model_id,
            ticket.largest_batch_items,
            ticket.largest_batch_requests,
        )

    async def _submit(self, pairs: list[Pair], deadline_ms: float) -> Ticket[float]:
        assert self._scheduler is not None, "start() the worker first"
        deadline = time.monotonic() + (deadline_ms - now_ms()) / 1000
        return await self._scheduler.submit(pairs, deadline)

    def _missed_deadline(self, candidate_set: CandidateSet, timings: StageTimings) -> RankedResult:
        """Retrieval order marked degraded, or an `expired` error, as configured."""
        request = candidate_set.request
        action = self._settings.on_deadline
        DEADLINE_MISSES.labels(worker=WORKER, action=action).inc()
        if action == "expired":
            raise ExpiredError(f"deadline passed before request {request.request_id} was scored")
        return ranked_result(candidate_set, [], timings, self.model.model_id, degraded=True)
