"""Rerank worker: candidate set -> each stage of its plan (pairs under the stage's token
budget, tokenized once, pooled across requests by that scorer's batcher) -> ranked result,
which is also written to the result cache. A rerank request (the caller's own candidates) is
planned here, then executed the same way."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING

from faststream.nats.annotations import NatsMessage

from rankstream.errors import DeadlineExceededError, ExpiredError
from rankstream.models.base import CrossEncoderBackend, PairEncoding
from rankstream.models.budgets import DocumentBudget
from rankstream.models.registry import load_cross_encoder, load_token_embedder
from rankstream.planning.admission import Planner
from rankstream.planning.plan import StagePlan
from rankstream.planning.scorers import MAXSIM_SCORER, scorer_model
from rankstream.ranking import Scored, ranked_result, rerank_top, retrieval_order
from rankstream.scheduling.admission import PairBudget
from rankstream.scheduling.batcher import BatchStats
from rankstream.scheduling.deadlines import Deadline
from rankstream.scheduling.lanes import LANES, lane_name, priority_lane
from rankstream.scheduling.pair_scheduler import rerank_batch_limits
from rankstream.stages import CrossEncoderStage, StageInput, StageOutcome
from rankstream.wire.contract import RankedResult, RerankRequest, StageReport, StageTimings, now_ms
from rankstream.wire.handoff import CandidateSet, brought_candidates
from rankstream.workers.context import WorkerContext
from rankstream.workers.delivery import work_queue_subscription
from rankstream.workers.heartbeat import in_progress_heartbeats
from rankstream.workers.model_runner import ModelRunner
from rankstream.workers.replies import ReplySender

if TYPE_CHECKING:  # the MaxSim stage needs LanceDB and torch: imported when first loaded
    from rankstream.retrieval.late_interaction import MaxSimStage

log = logging.getLogger(__name__)

WORKER = "rerank"
WARM_UP_LENGTHS = (16, 64, 128, 256, 512)


class RerankWorker:
    """The rerank handler and what it holds: a stage runtime per scorer (`ce`, and any other
    a request names, loaded on first use), the pair budget they share, the result cache.

    Args:
        context: settings (limits, batching, budgets, deadlines), broker (its subscriber is
            registered on it; the caller starts it), metrics, and the cache answers go to.
        model: a loaded cross-encoder for `ce`; default: `load_cross_encoder(settings)`.
    """

    def __init__(self, context: WorkerContext, model: CrossEncoderBackend | None = None) -> None:
        settings, metrics = context.settings, context.metrics
        self._settings, self._metrics = settings, metrics
        self._planner = Planner(settings)
        self._given: dict[str, CrossEncoderBackend] = {} if model is None else {"ce": model}
        subjects = context.subjects
        self._replies = ReplySender(context.broker, subjects, WORKER, metrics, context.cache)
        self._budget = PairBudget(
            settings.max_inflight_pairs, on_change=metrics.rerank_inflight_pairs.set
        )
        self._stages: dict[str, CrossEncoderStage] = {}
        self._runners: dict[str, ModelRunner[PairEncoding, float]] = {}
        self._maxsim: MaxSimStage | None = None
        self._loading = asyncio.Lock()
        self._exit = AsyncExitStack()
        context.broker.subscriber(
            **work_queue_subscription(
                settings,
                subjects.candidates,
                subjects.streams.candidates,
                subjects.durable("rerank"),
            ),
            title="rerank:candidates",
            description="Candidate sets; their pairs are scored in batches shared across "
            "requests and the ranked result is sent to the request's reply_to.",
        )(self.handle)
        context.broker.subscriber(
            **work_queue_subscription(
                settings,
                subjects.rerank,
                subjects.streams.rerank,
                subjects.durable("rerank-direct"),
            ),
            title="rerank:requests",
            description="Rerank requests that bring their own candidates (no retrieval); "
            "batched with every other request's pairs, answered with a RankedResult.",
        )(self.handle_rerank_request)

    @property
    def model(self) -> CrossEncoderBackend:
        """The `ce` scorer's cross-encoder."""
        return self._stages["ce"].model

    async def start(self) -> None:
        """Load and warm up `ce` and the preloaded scorers, each in a thread."""
        for scorer in dict.fromkeys(["ce", *self._settings.preload_scorers]):
            if scorer == MAXSIM_SCORER:
                await self._maxsim_stage()
            else:
                await self._stage(scorer)

    async def stop(self) -> None:
        await self._exit.aclose()

    async def _stage(self, scorer: str) -> CrossEncoderStage:
        """The runtime of `scorer`, loaded and warmed up on first use."""
        if scorer in self._stages:
            return self._stages[scorer]
        async with self._loading:
            if scorer not in self._stages:
                model = self._given.get(scorer)
                if model is None:
                    name = scorer_model(self._settings, scorer)
                    model = await asyncio.to_thread(load_cross_encoder, self._settings, name)
                await asyncio.to_thread(self._warm_up, model)
                stage = CrossEncoderStage(
                    model,
                    rerank_batch_limits(self._settings),
                    self._budget,
                    partial(self._on_batch, scorer),
                    self._settings.shed_load,
                )
                runner = ModelRunner(stage.scheduler.batcher, model.score, f"rerank:{scorer}")
                self._runners[scorer] = await self._exit.enter_async_context(runner)
                self._stages[scorer] = stage
        return self._stages[scorer]

    async def _maxsim_stage(self) -> MaxSimStage:
        """The late-interaction stage, its token model loaded on first use."""
        async with self._loading:
            if self._maxsim is None:
                from rankstream.retrieval.late_interaction import MaxSimStage

                embedder = await asyncio.to_thread(load_token_embedder, self._settings)
                self._maxsim = MaxSimStage(embedder, self._settings.lancedb_uri)
        return self._maxsim

    def _warm_up(self, model: CrossEncoderBackend) -> None:
        """First calls allocate buffers and pick kernels; pay that before reporting ready."""
        for length in WARM_UP_LENGTHS:
            if length > model.max_length:
                break
            (encoding,) = model.tokenizer.encode([("warm up", " ".join(["passage"] * length))])
            batch = max(
                1, min(self._settings.max_batch_pairs, self._settings.max_batch_tokens // length)
            )
            for size in sorted({1, batch}):
                model.score([encoding] * size)

    def _on_batch(self, scorer: str, stats: BatchStats) -> None:
        self._metrics.observe_rerank_batch(stats, scorer)
        queued = sum(stage.scheduler.queued_pairs for stage in self._stages.values())
        self._metrics.rerank_queued_pairs.set(queued)
        by_lane = [stage.scheduler.queued_by_lane() for stage in self._stages.values()]
        for lane in range(len(LANES)):
            pairs = sum(lanes.get(lane, 0) for lanes in by_lane)
            self._metrics.rerank_lane_queued.labels(lane=lane_name(lane)).set(pairs)

    async def handle(self, candidate_set: CandidateSet, message: NatsMessage) -> None:
        received = now_ms()
        plan = candidate_set.plan
        with self._metrics.inflight_requests.labels(worker=WORKER).track_inprogress():
            self._planner.check_executable(candidate_set)
            async with in_progress_heartbeats(message, self._settings.ack_wait_s / 3):
                reply = await self._rerank(candidate_set, received)
            self._metrics.observe_timings(reply.timings_ms)
            await self._replies.answer(plan, reply, candidate_set.query_vector)

    async def handle_rerank_request(self, request: RerankRequest, message: NatsMessage) -> None:
        plan = self._planner.plan_rerank(request, received_at_ms=now_ms())
        candidates = CandidateSet(
            plan=plan,
            candidates=brought_candidates(request),
            published_at_ms=plan.created_at_ms,  # its queue wait is all rerank queue wait
        )
        await self.handle(candidates, message)

    async def _rerank(self, candidate_set: CandidateSet, received: float) -> RankedResult:
        plan = candidate_set.plan
        timings = candidate_set.timings_ms.model_copy(
            update={"rerank_queue_wait": max(0.0, received - candidate_set.published_at_ms)}
        )
        deadline = Deadline.of(plan, self._settings.deadline_margin_ms)
        if deadline.passed():
            return self._missed_deadline(candidate_set, timings)
        order = retrieval_order(candidate_set.candidates)
        reports: list[StageReport] = []
        outcome: StageOutcome | None = None
        for stage in plan.stages:
            depth = min(stage.depth, len(order))
            try:
                outcome = await self._score(candidate_set, stage, order[:depth], deadline)
            except DeadlineExceededError:
                if not reports:
                    return self._missed_deadline(candidate_set, timings)
                return self._answer(candidate_set, order, reports, timings, outcome, True)
            order = rerank_top(order, outcome.scores, stage.name, stage.interpolate)
            reports.append(self._report(stage, depth, outcome))
        return self._answer(candidate_set, order, reports, timings, outcome, False)

    async def _score(
        self,
        candidate_set: CandidateSet,
        stage: StagePlan,
        top: list[Scored],
        deadline: Deadline,
    ) -> StageOutcome:
        plan = candidate_set.plan
        budget = DocumentBudget(stage.max_doc_tokens, stage.long_docs, stage.maxp_windows)
        pairs = StageInput(
            query=plan.query,
            documents=[s.candidate.text for s in top],
            token_ids=[
                tuple(s.candidate.token_ids) if s.candidate.token_ids is not None else None
                for s in top
            ],
            tokenizer=candidate_set.tokenizer,
            budget=budget,
            deadline=deadline,
            lane=priority_lane(plan.priority),
            doc_ids=[s.candidate.doc_id for s in top],
        )
        if stage.scorer == MAXSIM_SCORER:
            assert plan.retrieval is not None, "MaxSim reads the token vectors of a table"
            return await (await self._maxsim_stage()).score(pairs, plan.retrieval.table)
        outcome = await (await self._stage(stage.scorer)).score(pairs)
        lane = lane_name(priority_lane(plan.priority))
        self._metrics.rerank_lane_wait.labels(lane=lane).observe(outcome.ticket.batch_wait_s)
        self._metrics.rerank_over_budget.inc(outcome.plan.over_budget)
        self._metrics.rerank_truncated_tokens.inc(outcome.plan.truncated_tokens)
        self._metrics.rerank_tokenized_docs.inc(outcome.tokenized_documents)
        return outcome

    def _report(self, stage: StagePlan, depth: int, outcome: StageOutcome) -> StageReport:
        return StageReport(
            name=stage.name,
            model_id=self._runtime_model_id(stage.scorer),
            candidates=depth,
            pairs=len(outcome.plan.owners),
            over_budget=outcome.plan.over_budget,
            truncated_tokens=outcome.plan.truncated_tokens,
            batch_wait_ms=outcome.ticket.batch_wait_s * 1000,
            inference_ms=outcome.ticket.inference_s * 1000,
        )

    def _runtime_model_id(self, scorer: str) -> str:
        if scorer == MAXSIM_SCORER and self._maxsim is not None:
            return self._maxsim.model_id
        return self._stages[scorer].model.model_id

    def _answer(
        self,
        candidate_set: CandidateSet,
        order: list[Scored],
        reports: list[StageReport],
        timings: StageTimings,
        last: StageOutcome | None,
        degraded: bool,
    ) -> RankedResult:
        timings = timings.model_copy(
            update={
                "batch_wait": sum(r.batch_wait_ms for r in reports),
                "inference": sum(r.inference_ms for r in reports),
            }
        )
        ticket = last.ticket if last is not None else None
        return ranked_result(
            candidate_set,
            order,
            timings,
            reports[-1].model_id if reports else "none",
            reports,
            ticket.largest_batch_items if ticket else 0,
            ticket.largest_batch_requests if ticket else 0,
            degraded=degraded,
        )

    def _missed_deadline(self, candidate_set: CandidateSet, timings: StageTimings) -> RankedResult:
        """Retrieval order marked degraded, or an `expired` error, as configured."""
        action = self._settings.on_deadline
        self._metrics.deadline_misses.labels(worker=WORKER, action=action).inc()
        if action == "expired":
            request_id = candidate_set.plan.request_id
            raise ExpiredError(f"deadline passed before request {request_id} was scored")
        return ranked_result(
            candidate_set, retrieval_order(candidate_set.candidates), timings, "none", degraded=True
        )
