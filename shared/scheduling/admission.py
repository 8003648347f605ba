"""Admission control: a cap on the pairs a rerank worker holds at once.

A handler waits here before its pairs enter the batcher. While it waits it holds one of the
consumer's concurrent slots, so a full worker stops pulling from JetStream: backpressure goes
through the consumer, not into an unbounded queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class PairBudget:
    """At most `capacity` pairs held at once; `on_change(held)` is told each new total."""

    def __init__(self, capacity: int, on_change: Callable[[int], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.held = 0
        self._on_change = on_change
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pairs: int) -> AsyncIterator[None]:
        """Wait until `pairs` fit (a request larger than the whole budget waits for all of
        it), hold them for the block, release them after, in first-come order."""
        wanted = min(pairs, self.capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self.held + wanted <= self.capacity)
            self.held += wanted
            self._report()
        try:
            yield
        finally:
            async with self._changed:
                self.held -= wanted
                self._report()
                self._changed.notify_all()

    def _report(self) -> None:
        if self._on_change is not None:
            self._on_change(self.held)
