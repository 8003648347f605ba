"""The rerank worker's pair queue, without transport and without a model: each request's
pairs arrive already encoded (their lengths are their costs) and are pooled across requests
by the micro-batcher under the configured limits. The worker's model runner pulls the
batches from `batcher`, scores them and hands the scores back; this object keeps the model's
recent speed from those batches, which load shedding predicts with. The speed is kept in
tokens per second: a cross-encoder's cost grows with a pair's length, so pairs per second
measured on long pairs would predict 1,000 short pairs many times too slow (and refuse them),
and the other way round; tokens per second holds across lengths (on a 2-core CPU, ~5,500 for
pairs of 30 tokens and of 200 alike). `rankstream bench`
drives the same object in process, to tell what the scheduler loses from what transport
costs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from rankstream.config import Settings
from rankstream.models.base import PairEncoding
from rankstream.scheduling.batcher import BatchLimits, BatchStats, MicroBatcher, Ticket

# Weight of the newest batch in the throughput estimate that load shedding predicts with.
THROUGHPUT_SMOOTHING = 0.2


def rerank_batch_limits(settings: Settings) -> BatchLimits:
    """The configured cross-encoder batch limits."""
    return BatchLimits(
        max_items=settings.max_batch_pairs,
        max_padded_tokens=settings.max_batch_tokens,
        max_wait_s=settings.max_batch_wait_ms / 1000,
        sort_window=settings.batch_sort_window,
        lane_ageing_s=settings.priority_ageing_s,
        yield_padded_tokens=settings.priority_yield_tokens,
    )


class PairScheduler:
    """Queues encoded pairs; a model runner pulls their batches from `batcher` (and opens it).

    Args:
        limits: when a batch closes (see `rerank_batch_limits`).
        on_batch: called with each scored batch's figures (for metrics).
    """

    def __init__(
        self, limits: BatchLimits, on_batch: Callable[[BatchStats], None] | None = None
    ) -> None:
        self._on_batch = on_batch
        self.batcher: MicroBatcher[PairEncoding, float] = MicroBatcher(
            limits, on_batch=self._observe
        )
        self._pairs_per_s: float | None = None
        self._tokens_per_s: float | None = None

    @property
    def queued_pairs(self) -> int:
        return self.batcher.queued_items

    @property
    def pairs_per_s(self) -> float | None:
        """The model's recent scoring speed (None until a batch has been scored)."""
        return self._pairs_per_s

    def queued_by_lane(self) -> dict[int, int]:
        return self.batcher.queued_by_lane()

    @property
    def tokens_per_s(self) -> float | None:
        """The model's recent scoring speed in (unpadded) pair tokens; None until a batch
        has been scored."""
        return self._tokens_per_s

    def predicted_wait_s(self, tokens: int, lane: int = 0, queued: bool = True) -> float | None:
        """How long pairs of `tokens` tokens in all, more in `lane`, would take to score
        behind the tokens queued in that lane or a more urgent one (`queued` False: with
        nothing queued), at the recent speed; None while the speed is unknown."""
        if self._tokens_per_s is None:
            return None
        ahead = self.batcher.queued_cost_ahead_of(lane) if queued else 0
        return (ahead + tokens) / self._tokens_per_s

    async def submit(
        self, encodings: Sequence[PairEncoding], deadline: float | None = None
    ) -> Ticket[float]:
        """Scores for `encodings`, in order; `deadline` is on `time.monotonic`'s clock (see
        MicroBatcher.enqueue for what happens when it passes)."""
        return await self.enqueue(encodings, deadline)

    def enqueue(
        self, encodings: Sequence[PairEncoding], deadline: float | None = None, lane: int = 0
    ) -> asyncio.Future[Ticket[float]]:
        """Queue pairs encoded by the model the runner scores with, now (so a check of the
        queue just before still holds); see MicroBatcher.enqueue."""
        costs = [len(encoding) for encoding in encodings]
        return self.batcher.enqueue(encodings, costs, deadline=deadline, lane=lane)

    def _observe(self, stats: BatchStats) -> None:
        if stats.seconds > 0:
            self._pairs_per_s = _smoothed(self._pairs_per_s, stats.items / stats.seconds)
            self._tokens_per_s = _smoothed(self._tokens_per_s, stats.real_tokens / stats.seconds)
        if self._on_batch is not None:
            self._on_batch(stats)


def _smoothed(previous: float | None, speed: float) -> float:
    """The newest speed, blended into the estimate so far."""
    if previous is None:
        return speed
    return (1 - THROUGHPUT_SMOOTHING) * previous + THROUGHPUT_SMOOTHING * speed
