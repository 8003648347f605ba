"""The rerank worker's pair queue, without transport and without a model: each request's
pairs arrive already encoded (their lengths are their costs) and are pooled across requests
by the micro-batcher under the configured limits. The worker's model runner pulls the
batches from `batcher`, scores them and hands the scores back; this object keeps the model's
recent speed from those batches, which load shedding predicts with. `rankstream bench`
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

    @property
    def queued_pairs(self) -> int:
        return self.batcher.queued_items

    @property
    def pairs_per_s(self) -> float | None:
        """The model's recent scoring speed (None until a batch has been scored)."""
        return self._pairs_per_s

    def queued_by_lane(self) -> dict[int, int]:
        return self.batcher.queued_by_lane()

    def predicted_wait_s(self, pairs: int, lane: int = 0, queued: bool = True) -> float | None:
        """How long `pairs` more in `lane` would take to score behind what is queued in that
        lane or a more urgent one (`queued` False: with nothing queued), at the recent speed;
        None while the speed is unknown."""
        if self._pairs_per_s is None:
            return None
        ahead = self.batcher.queued_ahead_of(lane) if queued else 0
        return (ahead + pairs) / self._pairs_per_s

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
            speed = stats.items / stats.seconds
            previous = self._pairs_per_s
            self._pairs_per_s = (
                speed
                if previous is None
                else (1 - THROUGHPUT_SMOOTHING) * previous + THROUGHPUT_SMOOTHING * speed
            )
        if self._on_batch is not None:
            self._on_batch(stats)
