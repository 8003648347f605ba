"""The rerank worker's scheduling, without transport: each request's (query, document) pairs
are tokenized once by the model's tokenizer (their lengths are their costs), pooled across
requests by the micro-batcher under the configured limits, and scored from those encodings
in a thread. `rankstream bench` drives the same object in process, to tell what the
scheduler loses from what transport costs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rankstream.config import Settings
from rankstream.models.base import CrossEncoderBackend, Pair, PairEncoding
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
    """Run as `async with PairScheduler(model, limits) as scheduler:`.

    Args:
        model: what the pairs are encoded and scored with.
        limits: when a batch closes (see `rerank_batch_limits`).
        on_batch: called with each model call's figures (for metrics).
    """

    def __init__(
        self,
        model: CrossEncoderBackend,
        limits: BatchLimits,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.model = model
        self._on_batch = on_batch
        self._batcher: MicroBatcher[PairEncoding, float] = MicroBatcher(
            self._score, limits, on_batch=self._observe
        )
        self._pairs_per_s: float | None = None

    async def __aenter__(self) -> PairScheduler:
        await self._batcher.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._batcher.__aexit__(*exc_info)

    @property
    def queued_pairs(self) -> int:
        return self._batcher.queued_items

    @property
    def pairs_per_s(self) -> float | None:
        """The model's recent scoring speed (None until a batch has been scored)."""
        return self._pairs_per_s

    def queued_by_lane(self) -> dict[int, int]:
        return self._batcher.queued_by_lane()

    def predicted_wait_s(self, pairs: int, lane: int = 0) -> float | None:
        """How long `pairs` more in `lane` would take to score behind what is queued in that
        lane or a more urgent one, at the recent speed; None while the speed is unknown."""
        if self._pairs_per_s is None:
            return None
        return (self._batcher.queued_ahead_of(lane) + pairs) / self._pairs_per_s

    async def submit(self, pairs: list[Pair], deadline: float | None = None) -> Ticket[float]:
        """Scores for `pairs`, in order; `deadline` is on `time.monotonic`'s clock (see
        MicroBatcher.submit for what happens when it passes)."""
        encodings = await asyncio.to_thread(self.model.tokenizer.encode, pairs)
        return await self.enqueue(encodings, deadline)

    def enqueue(
        self, encodings: list[PairEncoding], deadline: float | None = None, lane: int = 0
    ) -> asyncio.Future[Ticket[float]]:
        """Queue pairs already encoded by this scheduler's model, now (so a check of the queue
        just before still holds); see MicroBatcher.enqueue."""
        costs = [len(encoding) for encoding in encodings]
        return self._batcher.enqueue(encodings, costs, deadline=deadline, lane=lane)

    async def _score(self, batch: list[PairEncoding]) -> list[float]:
        return await asyncio.to_thread(self.model.score, batch)

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
