"""The micro-batcher: pools items from concurrent requests into one call of a batch function.

It knows nothing of NATS or models: it is handed `process(items) -> outputs` and per-item
costs (tokens). Requests are served first-in first-out, item by item, so a large request is
split across batches and never makes a small one behind it wait longer than its own share.
A request whose caller has gone (its awaiting task was cancelled) is dropped before its
remaining items reach `process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchLimits:
    """A batch closes at `max_items`, at `max_padded_tokens` (items x longest item), or when
    its oldest item has waited `max_wait_s` for company."""

    max_items: int
    max_padded_tokens: int
    max_wait_s: float

    def __post_init__(self) -> None:
        if self.max_items < 1 or self.max_padded_tokens < 1 or self.max_wait_s < 0:
            raise ValueError(f"invalid batch limits: {self}")


@dataclass(frozen=True)
class BatchStats:
    """What one call of the batch function looked like."""

    items: int
    requests: int
    real_tokens: int
    padded_tokens: int
    seconds: float


@dataclass(frozen=True)
class Ticket(Generic[R]):
    """One request's outputs, in submission order, and how its items were batched."""

    outputs: list[R]
    batch_wait_s: float
    inference_s: float
    largest_batch_items: int
    largest_batch_requests: int


@dataclass(eq=False)
class _Request(Generic[T, R]):
    items: Sequence[T]
    costs: Sequence[int]
    submitted_at: float
    future: asyncio.Future[Ticket[R]]
    outputs: list[R | None] = field(default_factory=list)
    next_item: int = 0
    scored: int = 0
    first_batch_at: float | None = None
    inference_s: float = 0.0
    largest_batch_items: int = 0
    largest_batch_requests: int = 0

    @property
    def unbatched(self) -> int:
        return len(self.items) - self.next_item

    @property
    def abandoned(self) -> bool:
        return self.future.done()


class MicroBatcher(Generic[T, R]):
    """Run as `async with MicroBatcher(process, limits) as batcher: await batcher.submit(...)`."""

    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[list[R]]],
        limits: BatchLimits,
        on_batch: Callable[[BatchStats], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._process = process
        self._limits = limits
        self._on_batch = on_batch
        self._clock = clock
        self._queue: deque[_Request[T, R]] = deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MicroBatcher[T, R]:
        self._loop_task = asyncio.create_task(self._run(), name="micro-batcher")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for request in self._queue:
            if not request.future.done():
                request.future.set_exception(RuntimeError("micro-batcher stopped"))
        self._queue.clear()

    @property
    def queued_items(self) -> int:
        return sum(r.unbatched for r in self._queue if not r.abandoned)

    async def submit(self, items: Sequence[T], costs: Sequence[int]) -> Ticket[R]:
        """Queue one request's items and wait for all their outputs.

        Raises whatever `process` raised for a batch holding one of these items.
        """
        if len(items) != len(costs):
            raise ValueError(f"{len(items)} items but {len(costs)} costs")
        if self._loop_task is None or self._loop_task.done():
            raise RuntimeError("micro-batcher is not running: use it as an async context manager")
        future: asyncio.Future[Ticket[R]] = asyncio.get_running_loop().create_future()
        if not items:
            return Ticket([], 0.0, 0.0, 0, 0)
        request: _Request[T, R] = _Request(
            items, costs, self._clock(), future, outputs=[None] * len(items)
        )
        self._queue.append(request)
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            await self._wait_for_fuller_batch()
            batch = self._take_batch()
            if not self._queue:
                self._arrived.clear()
            if batch:
                await self._execute(batch)

    async def _wait_for_fuller_batch(self) -> None:
        self._drop_abandoned()
        if not self._queue:
            return
        close_at = self._queue[0].submitted_at + self._limits.max_wait_s
        while not self._is_full() and (remaining := close_at - self._clock()) > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        self._arrived.set()

    def _is_full(self) -> bool:
        pending = [r for r in self._queue if not r.abandoned]
        items = sum(r.unbatched for r in pending)
        longest = max((max(r.costs[r.next_item :]) for r in pending if r.unbatched), default=0)
        return items >= self._limits.max_items or items * longest >= self._limits.max_padded_tokens

    def _drop_abandoned(self) -> None:
        self._queue = deque(r for r in self._queue if not r.abandoned)

    def _take_batch(self) -> list[tuple[_Request[T, R], int]]:
        """First-in first-out, item by item, until the next item would break a limit."""
        self._drop_abandoned()
        batch: list[tuple[_Request[T, R], int]] = []
        longest = 0
        while self._queue:
            request = self._queue[0]
            cost = request.costs[request.next_item]
            size = len(batch) + 1
            padded = size * max(longest, cost)
            if batch and (size > self._limits.max_items or padded > self._limits.max_padded_tokens):
                break
            batch.append((request, request.next_item))
            longest = max(longest, cost)
            request.next_item += 1
            if request.unbatched == 0:
                self._queue.popleft()
        return batch

    async def _execute(self, batch: list[tuple[_Request[T, R], int]]) -> None:
        requests = list(dict.fromkeys(request for request, _ in batch))
        started = self._clock()
        for request in requests:
            if request.first_batch_at is None:
                request.first_batch_at = started
        try:
            outputs = await self._process([request.items[i] for request, i in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"batch function returned {len(outputs)} for {len(batch)}")
        except Exception as error:
            self._fail(requests, error)
            return
        seconds = self._clock() - started
        self._report(batch, requests, seconds)
        for (request, index), output in zip(batch, outputs, strict=True):
            request.outputs[index] = output
            request.scored += 1
        self._settle(requests, len(batch), seconds)

    def _report(
        self,
        batch: list[tuple[_Request[T, R], int]],
        requests: list[_Request[T, R]],
        seconds: float,
    ) -> None:
        if self._on_batch is None:
            return
        costs = [request.costs[i] for request, i in batch]
        self._on_batch(
            BatchStats(len(batch), len(requests), sum(costs), len(costs) * max(costs), seconds)
        )

    def _settle(self, requests: list[_Request[T, R]], batch_items: int, seconds: float) -> None:
        for request in requests:
            request.inference_s += seconds
            if batch_items > request.largest_batch_items:
                request.largest_batch_items = batch_items
                request.largest_batch_requests = len(requests)
            if request.scored == len(request.items) and not request.future.done():
                assert request.first_batch_at is not None
                request.future.set_result(
                    Ticket(
                        outputs=cast(list[R], request.outputs),
                        batch_wait_s=request.first_batch_at - request.submitted_at,
                        inference_s=request.inference_s,
                        largest_batch_items=request.largest_batch_items,
                        largest_batch_requests=request.largest_batch_requests,
                    )
                )

    def _fail(self, requests: list[_Request[T, R]], error: Exception) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)
        failed = set(requests)
        self._queue = deque(r for r in self._queue if r not in failed)
