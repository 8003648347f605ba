"""A rerank stage, without transport: one request's candidates tokenized and planned into
pairs under a token budget, then queued on the stage's pair scheduler, whose batches the
worker's model runner scores.

This is the caller side of scheduling, as text-embeddings-inference tokenizes before its
queue: documents arrive as text, or as the token ids computed at index time (used only when
they come from this model's tokenizer); only the query, and documents without ids, are
tokenized here, and the scheduler sees only the encodings and their costs. Admission (the
worker's pair budget) and load shedding happen here too, just before the pairs are queued,
so the check sees the queue they join.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rankstream.errors import DeadlineExceededError, OverloadedError
from rankstream.models.base import CrossEncoderBackend, PairEncoding, TokenIds, finite_scores
from rankstream.models.budgets import DocumentBudget, PairPlan, plan_pairs
from rankstream.scheduling.admission import PairBudget
from rankstream.scheduling.batcher import BatchLimits, BatchStats, Ticket
from rankstream.scheduling.deadlines import Deadline
from rankstream.scheduling.pair_scheduler import PairScheduler


@dataclass(frozen=True)
class StageInput:
    """One request's candidates for one stage. `token_ids[i]` is document i's ids from the
    tokenizer named `tokenizer` (a fingerprint), or None; `doc_ids[i]` its id (stages that
    read what the store keeps per document use it)."""

    query: str
    documents: Sequence[str]
    token_ids: Sequence[TokenIds | None]
    tokenizer: str | None
    budget: DocumentBudget
    deadline: Deadline
    lane: int = 0
    doc_ids: Sequence[str] = ()


@dataclass(frozen=True)
class StageOutcome:
    scores: list[float]  # one per document, in order
    plan: PairPlan
    ticket: Ticket[float]
    tokenized_documents: int  # documents that had no usable ids and were tokenized here


class CrossEncoderStage:
    """Scores candidates once a model runner pulls from `scheduler.batcher` with `model`.

    Args:
        model: the cross-encoder: its tokenizer encodes the pairs here; the runner scores
            them with it.
        limits: its batches' limits.
        budget: the worker's pair budget, shared by all its stages (admission).
        on_batch: called with each model call's figures.
        shed_load: refuse at once (OverloadedError) what the queue ahead would make late.
    """

    def __init__(
        self,
        model: CrossEncoderBackend,
        limits: BatchLimits,
        budget: PairBudget,
        on_batch: Callable[[BatchStats], None] | None = None,
        shed_load: bool = True,
    ) -> None:
        self.model = model
        self.model_id = model.model_id
        self._budget = budget
        self._shed_load = shed_load
        self.scheduler = PairScheduler(limits, on_batch)

    async def score(self, stage: StageInput) -> StageOutcome:
        """Scores for `stage.documents`, in order.

        Raises:
            InvalidRequestError: the query leaves a document too little room.
            ModelError: the model scored one of these pairs NaN or inf (others' requests in
                the same batch are answered).
            OverloadedError: the pairs queued ahead would not be scored in time.
            DeadlineExceededError: the deadline passed while they waited for room in the pair
                budget, were queued or were scored, or they could not be scored in the time
                left even on an empty queue.
        """
        query, documents, tokenized = await asyncio.to_thread(self._tokens, stage)
        plan = plan_pairs(self.model.tokenizer, query, documents, stage.budget)
        wait_s = max(0.0, stage.deadline.remaining_s())
        tokens = sum(len(encoding) for encoding in plan.encodings)
        if self._budget.must_wait(len(plan.encodings)):
            self._shed_if_late_for_room(tokens, stage.deadline)
        async with self._budget.hold(len(plan.encodings), wait_s, tokens):
            self._shed_if_late(plan.encodings, stage.deadline, stage.lane)
            scored = self.scheduler.enqueue(plan.encodings, stage.deadline.monotonic(), stage.lane)
            try:
                # Queued pairs are dropped at the deadline by the batcher; a batch already
                # in the model is not waited for past it.
                ticket = await asyncio.wait_for(scored, max(0.0, stage.deadline.remaining_s()))
            except TimeoutError as error:
                raise DeadlineExceededError("deadline passed during scoring") from error
        # Checked here, per request: a batch mixes requests, and a pair that scored NaN
        # fails only the request that owns it.
        scores = finite_scores(ticket.outputs, self.model_id)
        return StageOutcome(plan.candidate_scores(scores), plan, ticket, tokenized)

    def _tokens(self, stage: StageInput) -> tuple[TokenIds, list[TokenIds], int]:
        """The query's ids, and each document's: stored ones where they are this model's,
        freshly tokenized otherwise."""
        codec = self.model.tokenizer
        query = codec.encode_query(stage.query)
        usable = stage.tokenizer == codec.fingerprint and len(stage.token_ids) == len(
            stage.documents
        )
        stored = list(stage.token_ids) if usable else [None] * len(stage.documents)
        missing = [text for text, ids in zip(stage.documents, stored, strict=True) if ids is None]
        fresh = iter(codec.encode_documents(missing))
        documents = [ids if ids is not None else next(fresh) for ids in stored]
        return query, documents, len(missing)

    def _shed_if_late_for_room(self, tokens: int, deadline: Deadline) -> None:
        """Refuse at once pairs that would wait for room in the pair budget (first come, first
        served) and still be scored too late: every pair held and waiting goes first. Without
        this, such a request would wait for room until its deadline and then miss it."""
        speed = self.scheduler.tokens_per_s
        if not self._shed_load or speed is None:
            return
        left = max(0.0, deadline.remaining_s())
        wait_s = (self._budget.tokens_ahead + tokens) / speed
        if wait_s <= left:
            return
        if short_of_time(tokens / speed, left):
            raise DeadlineExceededError(
                f"its {tokens} tokens take about {tokens / speed:.1f} s to score; "
                f"{left:.1f} s were left"
            )
        raise OverloadedError(
            f"{self._budget.held} pairs held and {self._budget.waiting} requests waiting for "
            f"room ahead: about {wait_s:.1f} s to score, {left:.1f} s left before the deadline"
        )

    def _shed_if_late(
        self, encodings: Sequence[PairEncoding], deadline: Deadline, lane: int
    ) -> None:
        """Refuse pairs that would be scored too late: overloaded when the queue ahead makes
        them late, a missed deadline when they would be late on an empty queue too (the
        request was short of time, the worker is not short of capacity). Predicted from
        their tokens at the model's recent tokens per second (PairScheduler)."""
        if not self._shed_load:
            return
        tokens = sum(len(encoding) for encoding in encodings)
        left = max(0.0, deadline.remaining_s())
        wait_s = self.scheduler.predicted_wait_s(tokens, lane)
        if wait_s is None or wait_s <= left:
            return
        alone_s = self.scheduler.predicted_wait_s(tokens, lane, queued=False) or 0.0
        if short_of_time(alone_s, left):
            raise DeadlineExceededError(
                f"its {len(encodings)} pairs ({tokens} tokens) take about {alone_s:.1f} s to "
                f"score; {left:.1f} s were left"
            )
        raise OverloadedError(
            f"{self.scheduler.queued_pairs} pairs queued ahead: about {wait_s:.1f} s to "
            f"score, {left:.1f} s left before the deadline"
        )


# Under this much time left, a request that misses its deadline is expired, never overloaded:
# no retry could be answered in time.
MIN_SLACK_S = 0.05


def short_of_time(alone_s: float, left_s: float) -> bool:
    """Whether a request that would be late behind the queue is short of time rather than
    shed for load: it has less than twice what its own pairs take on an empty queue (or
    under MIN_SLACK_S) left, so even a retry at once, with nothing queued, would be late.
    Such a request misses its deadline (`expired`); only one with room to spare is told
    `overloaded` and when to retry."""
    return left_s < max(2 * alone_s, MIN_SLACK_S)
