"""Rerank worker: candidate set -> micro-batcher (pairs pooled across requests) ->
cross-encoder -> ranked result to the requester."""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker

from shared.batching import BatchLimits, MicroBatcher, Ticket
from shared.config import Settings
from shared.errors import ExpiredError, RankstreamError
from shared.messages import CandidateSet, now_ms
from shared.metrics import INFLIGHT_REQUESTS, observe_rerank_batch, observe_timings
from shared.models import CrossEncoderBackend, Pair, load_cross_encoder
from shared.ranking import ranked_result
from shared.subjects import Subjects
from workers.broker import work_queue_subscription
from workers.replies import ReplySender

log = logging.getLogger(__name__)

WORKER = "rerank"


class RerankWorker:
    def __init__(self, settings: Settings, broker: NatsBroker) -> None:
        self._settings = settings
        self._subjects = Subjects(settings.subject_prefix)
        self._replies = ReplySender(broker, self._subjects, WORKER)
        self._model: CrossEncoderBackend | None = None
        self._batcher: MicroBatcher[Pair, float] | None = None
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
        assert self._model is not None, "start() the worker first"
        return self._model

    async def start(self) -> None:
        """Load the cross-encoder (in a thread), start the batcher, warm the model up."""
        self._model = await asyncio.to_thread(load_cross_encoder, self._settings)
        limits = BatchLimits(
            max_items=self._settings.max_batch_pairs,
            max_padded_tokens=self._settings.max_batch_tokens,
            max_wait_s=self._settings.max_batch_wait_ms / 1000,
        )
        self._batcher = MicroBatcher(self._score, limits, on_batch=observe_rerank_batch)
        await self._batcher.__aenter__()
        await self._score([("warm-up query", "a short warm-up passage")] * 2)

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.__aexit__(None, None, None)

    async def handle(self, candidate_set: CandidateSet) -> None:
        started = now_ms()
        request = candidate_set.request
        with INFLIGHT_REQUESTS.labels(worker=WORKER).track_inprogress():
            try:
                ticket = await self._rerank(candidate_set, started)
            except RankstreamError as error:
                await self._replies.send_error(request.reply_to, request.request_id, error)
                return
            timings = candidate_set.timings_ms.model_copy(
                update={
                    "rerank_queue_wait": max(0.0, started - candidate_set.published_at_ms),
                    "batch_wait": ticket.batch_wait_s * 1000,
                    "inference": ticket.inference_s * 1000,
                }
            )
            result = ranked_result(
                candidate_set,
                ticket.outputs,
                timings,
                self.model.model_id,
                ticket.largest_batch_items,
                ticket.largest_batch_requests,
            )
            observe_timings(result.timings_ms)
            await self._replies.send(request.reply_to, result)

    async def _rerank(self, candidate_set: CandidateSet, started: float) -> Ticket[float]:
        request = candidate_set.request
        if started > request.deadline_ms:
            raise ExpiredError(f"deadline passed {started - request.deadline_ms:.0f} ms ago")
        assert self._batcher is not None, "start() the worker first"
        pairs = [(request.query, c.text) for c in candidate_set.candidates[: request.depth]]
        costs = await asyncio.to_thread(self.model.token_lengths, pairs)
        return await self._batcher.submit(pairs, costs)

    async def _score(self, pairs: list[Pair]) -> list[float]:
        return await asyncio.to_thread(self.model.score, pairs)
