"""Admission control: a cap on the pairs a rerank worker holds at once.

A handler waits here before its pairs enter the batcher. While it waits it holds one of the
consumer's concurrent slots, so a full worker stops pulling from JetStream: backpressure goes
through the consumer, not into an unbounded queue. Waiters are served first come, first
served, so a large request is never starved by a stream of small ones that would fit before
it; and none waits past its deadline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from rankstream.errors import DeadlineExceededError


@dataclass(eq=False)
class _Waiter:
    pairs: int
    tokens: int = 0
    admitted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class PairBudget:
    """At most `capacity` pairs held at once; `on_change(held)` is told each new total."""

    def __init__(self, capacity: int, on_change: Callable[[int], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.held = 0
        self.held_tokens = 0
        self._on_change = on_change
        self._waiting: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return len(self._waiting)

    @property
    def tokens_ahead(self) -> int:
        """Tokens of the pairs held and of those waiting: what a request that has to wait
        for room waits to see scored (holders say their tokens, see `hold`)."""
        return self.held_tokens + sum(waiter.tokens for waiter in self._waiting)

    def must_wait(self, pairs: int) -> bool:
        """Whether `pairs` would wait for room now."""
        return bool(self._waiting) or self.held + min(pairs, self.capacity) > self.capacity

    @asynccontextmanager
    async def hold(
        self, pairs: int, timeout_s: float | None = None, tokens: int = 0
    ) -> AsyncIterator[None]:
        """Wait until `pairs` fit behind every earlier waiter (a request larger than the whole
        budget waits for all of it), hold them for the block, release them after. `tokens`:
        what they cost, counted in `tokens_ahead` for the requests behind them.

        Raises:
            DeadlineExceededError: no room within `timeout_s` (None: wait as long as it takes).
        """
        wanted = min(pairs, self.capacity)
        if not self._waiting and self.held + wanted <= self.capacity:
            self._take(wanted, tokens)
        else:
            await self._wait_for_room(_Waiter(wanted, tokens), timeout_s)
        try:
            yield
        finally:
            self.held -= wanted
            self.held_tokens -= tokens
            self._admit_waiters()

    async def _wait_for_room(self, waiter: _Waiter, timeout_s: float | None) -> None:
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.admitted), timeout_s)
        except TimeoutError:
            if waiter.admitted.done():  # admitted just as the wait ran out: keep it
                return
            self._waiting.remove(waiter)
            self._admit_waiters()  # the ones behind it may fit now
            raise DeadlineExceededError(
                f"waited {timeout_s:.1f} s for room for {waiter.pairs} pairs "
                f"({self.held} of {self.capacity} held)"
            ) from None
        except asyncio.CancelledError:
            if waiter.admitted.done():
                self.held -= waiter.pairs
                self.held_tokens -= waiter.tokens
            else:
                self._waiting.remove(waiter)
            self._admit_waiters()
            raise

    def _admit_waiters(self) -> None:
        """Admit waiters in arrival order while the first of them fits."""
        while self._waiting and self.held + self._waiting[0].pairs <= self.capacity:
            waiter = self._waiting.popleft()
            self._take(waiter.pairs, waiter.tokens)
            waiter.admitted.set_result(None)
        self._report()

    def _take(self, pairs: int, tokens: int) -> None:
        self.held += pairs
        self.held_tokens += tokens
        self._report()

    def _report(self) -> None:
        if self._on_change is not None:
            self._on_change(self.held)
