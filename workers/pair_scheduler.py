"""The rerank worker's scheduling, without transport: each request's (query, document) pairs
are costed by the model's tokenizer, pooled across requests by the micro-batcher under the
configured limits, and scored by the cross-encoder in a thread. `rankstream bench` drives
the same object in process, to tell what the scheduler loses from what transport costs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared.batching import BatchLimits, BatchStats, MicroBatcher, Ticket
from shared.config import Settings
from shared.models import CrossEncoderBackend, Pair


class PairScheduler:
    """Run as `async with PairScheduler(model, settings) as scheduler:`."""

    def __init__(
        self,
        model: CrossEncoderBackend,
        settings: Settings,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.model = model  # what it scores with
        limits = BatchLimits(
            max_items=settings.max_batch_pairs,
            max_padded_tokens=settings.max_batch_tokens,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            sort_window=settings.batch_sort_window,
        )
        self._batcher = MicroBatcher(self._score, limits, on_batch=on_batch)

    async def __aenter__(self) -> PairScheduler:
        await self._batcher.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._batcher.__aexit__(*exc_info)

    @property
    def queued_pairs(self) -> int:
        return self._batcher.queued_items

    async def submit(self, pairs: list[Pair], deadline: float | None = None) -> Ticket[float]:
        """Scores for `pairs`, in order; `deadline` is on `time.monotonic`'s clock (see
        MicroBatcher.submit for what happens when it passes)."""
        costs = await asyncio.to_thread(self.model.token_lengths, pairs)
        return await self._batcher.submit(pairs, costs, deadline=deadline)

    async def _score(self, pairs: list[Pair]) -> list[float]:
        return await asyncio.to_thread(self.model.score, pairs)
