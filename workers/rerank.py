"""Rerank worker: candidate set -> admission (pair budget) -> pair scheduler (pairs tokenized
once, pooled across requests, grouped by length) -> cross-encoder -> ranked result."""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from rankstream.config import Settings
from rankstream.errors import ExpiredError, OverloadedError
from rankstream.metrics import Metrics
from rankstream.models import CrossEncoderBackend, load_cross_encoder
from rankstream.models.base import PairEncoding
from rankstream.ranking import ranked_result
from rankstream.scheduling.admission import PairBudget
from rankstream.scheduling.batcher import BatchStats, DeadlineExceededError
from rankstream.scheduling.deadlines import Deadline
from rankstream.scheduling.limits import check_candidates
from rankstream.scheduling.pair_scheduler import PairScheduler, rerank_batch_limits
from rankstream.wire.messages import CandidateSet, RankedResult, StageTimings, now_ms
from rankstream.wire.subjects import Subjects
from rankstream.workers.delivery import work_queue_subscription
from rankstream.workers.heartbeat import in_progress_heartbeats
from rankstream.workers.replies import ReplySender

log = logging.getLogger(__name__)

WORKER = "rerank"
WARM_UP_LENGTHS = (16, 64, 128, 256, 512)


class RerankWorker:
    """The rerank handler and what it holds: the cross-encoder, its scheduler, the pair budget.

    Args:
        settings: limits, batching and deadline settings.
        broker: the broker its subscriber is registered on (started by the caller).
        metrics: where it reports.
        model: a loaded cross-encoder; default: `load_cross_encoder(settings)` in `start()`.
    """

    def __init__(
        self,
        settings: Settings,
        broker: NatsBroker,
        metrics: Metrics,
        model: CrossEncoderBackend | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._model = model
        subjects = Subjects.from_settings(settings)
        self._replies = ReplySender(broker, subjects, WORKER, metrics)
        self._scheduler: PairScheduler | None = None
        self._budget = PairBudget(
            settings.max_inflight_pairs, on_change=metrics.rerank_inflight_pairs.set
        )
        broker.subscriber(
            **work_queue_subscription(
                settings, subjects.candidates, subjects.candidates_stream, subjects.rerank_durable
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
        """Load the cross-encoder (in a thread) unless one was given, warm it up over the
        shapes it will see, then start the scheduler."""
        model = self._model
        if model is None:
            model = await asyncio.to_thread(load_cross_encoder, self._settings)
        await asyncio.to_thread(self._warm_up, model)
        scheduler = PairScheduler(model, rerank_batch_limits(self._settings), self._on_batch)
        await scheduler.__aenter__()
        self._scheduler = scheduler

    def _warm_up(self, model: CrossEncoderBackend) -> None:
        """First calls allocate buffers and pick kernels; pay that before reporting ready."""
        for length in WARM_UP_LENGTHS:
            if length > model.max_length:
                break
            (encoding,) = model.encode([("warm up", " ".join(["passage"] * length))])
            batch = max(
                1, min(self._settings.max_batch_pairs, self._settings.max_batch_tokens // length)
            )
            for size in sorted({1, batch}):
                model.score([encoding] * size)

    def _on_batch(self, stats: BatchStats) -> None:
        self._metrics.observe_rerank_batch(stats)
        if self._scheduler is not None:
            self._metrics.rerank_queued_pairs.set(self._scheduler.queued_pairs)

    async def stop(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.__aexit__(None, None, None)

    async def handle(self, candidate_set: CandidateSet, message: NatsMessage) -> None:
        started = now_ms()
        request = candidate_set.request
        with self._metrics.inflight_requests.labels(worker=WORKER).track_inprogress():
            async with in_progress_heartbeats(message, self._settings.ack_wait_s / 3):
                reply = await self._rerank(candidate_set, started)
            self._metrics.observe_timings(reply.timings_ms)
            await self._replies.send(request.reply_to, reply)

    async def _rerank(self, candidate_set: CandidateSet, started: float) -> RankedResult:
        request = candidate_set.request
        check_candidates(candidate_set, self._settings)
        timings = candidate_set.timings_ms.model_copy(
            update={"rerank_queue_wait": max(0.0, started - candidate_set.published_at_ms)}
        )
        deadline = Deadline.of(request, self._settings.deadline_margin_ms)
        if deadline.passed():
            return self._missed_deadline(candidate_set, timings)
        assert self._scheduler is not None, "start() the worker first"
        pairs = [(request.query, c.text) for c in candidate_set.candidates[: request.depth]]
        encodings = await asyncio.to_thread(self._scheduler.model.encode, pairs)
        async with self._budget.hold(len(encodings)):
            self._shed_if_late(encodings, deadline)
            scored = self._scheduler.enqueue(encodings, deadline.monotonic())
            try:
                # Queued pairs are dropped at the deadline by the batcher; a batch already in
                # the model is not waited for past it.
                ticket = await asyncio.wait_for(scored, max(0.0, deadline.remaining_s()))
            except (DeadlineExceededError, TimeoutError):
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

    def _shed_if_late(self, encodings: list[PairEncoding], deadline: Deadline) -> None:
        """Answer `overloaded` at once when the queue ahead predicts a missed deadline."""
        assert self._scheduler is not None
        if not self._settings.shed_load:
            return
        wait_s = self._scheduler.predicted_wait_s(len(encodings))
        if wait_s is not None and wait_s > deadline.remaining_s():
            raise OverloadedError(
                f"{self._scheduler.queued_pairs} pairs queued ahead: about {wait_s:.1f} s to "
                f"score, {max(0.0, deadline.remaining_s()):.1f} s left before the deadline"
            )

    def _missed_deadline(self, candidate_set: CandidateSet, timings: StageTimings) -> RankedResult:
        """Retrieval order marked degraded, or an `expired` error, as configured."""
        request = candidate_set.request
        action = self._settings.on_deadline
        self._metrics.deadline_misses.labels(worker=WORKER, action=action).inc()
        if action == "expired":
            raise ExpiredError(f"deadline passed before request {request.request_id} was scored")
        model_id = self._scheduler.model.model_id if self._scheduler else "none"
        return ranked_result(candidate_set, [], timings, model_id, degraded=True)
