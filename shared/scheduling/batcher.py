"""The micro-batcher: a queue that pools items from concurrent requests into batches.

It knows nothing of NATS or models, and never calls one. Requests queue their items, each
with its cost (its token count); a runner (the worker's inference loop) pulls the next batch
when it is due (`next_batch`), runs the model on it and hands the outputs back (`complete`)
or the error (`fail`), as text-embeddings-inference's queue and its batching task do. How a
batch is chosen:

- the oldest queued item of the most urgent lane is always in the next batch, so every
  request makes progress and none waits behind a large one indefinitely; a request's lane
  rises by one for every `lane_ageing_s` it has waited, so a batch lane never starves;
- around it, items of similar cost are taken from a bounded window of the oldest queued
  items (sorted by cost), so little of the batch is padding;
- a batch closes at `max_items`, at `max_padded_tokens` (items x costliest item), or when
  the oldest item has waited `max_wait_s` for company; a batch of a less urgent lane closes
  at `yield_padded_tokens` while urgent requests are about, because a batch cannot be
  interrupted: an urgent request that arrives mid-batch waits for at most that much;
- a request is answered as soon as its last item is scored; one whose caller has gone, or
  whose deadline has passed, is dropped before its remaining items are handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from rankstream.errors import DeadlineExceededError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchLimits:
    """A batch closes at `max_items`, at `max_padded_tokens` (items x costliest item), or
    when its oldest item has waited `max_wait_s`. `sort_window` bounds how many of the oldest
    queued items are considered when grouping by cost (0 = four batches' worth). A batch is
    taken from the most urgent lane queued (0 first); a request waiting `lane_ageing_s`
    moves up a lane (0: never). A batch of lane 1 or below closes at `yield_padded_tokens`
    (0: no such cap) while a lane-0 request was submitted within the last `urgent_window_s`."""

    max_items: int
    max_padded_tokens: int
    max_wait_s: float
    sort_window: int = 0
    lane_ageing_s: float = 5.0
    yield_padded_tokens: int = 0
    urgent_window_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_items < 1 or self.max_padded_tokens < 1 or self.max_wait_s < 0:
            raise ValueError(f"invalid batch limits: {self}")
        if self.sort_window < 0 or self.lane_ageing_s < 0:
            raise ValueError(f"invalid batch limits: {self}")
        if self.yield_padded_tokens < 0 or self.urgent_window_s < 0:
            raise ValueError(f"invalid batch limits: {self}")

    @property
    def window(self) -> int:
        return max(self.sort_window or 4 * self.max_items, 1)


@dataclass(frozen=True)
class BatchStats:
    """What one batch looked like; `seconds` from its hand-out to its outputs."""

    items: int
    requests: int
    real_tokens: int
    padded_tokens: int
    seconds: float


@dataclass(frozen=True)
class Ticket(Generic[R]):
    """One request's outputs, in submission order, and how its items were batched:
    `inference_s` is the model time of the batches it rode in, `batch_wait_s` the rest of
    the time from submission to its last output (queued, or waiting between batches)."""

    outputs: list[R]
    batch_wait_s: float
    inference_s: float
    largest_batch_items: int
    largest_batch_requests: int


@dataclass(eq=False)
class _Request(Generic[T, R]):
    items: Sequence[T]
    submitted_at: float
    deadline: float | None
    future: asyncio.Future[Ticket[R]]
    lane: int = 0
    outputs: list[R | None] = field(default_factory=list)
    scored: int = 0
    inference_s: float = 0.0
    largest_batch_items: int = 0
    largest_batch_requests: int = 0

    @property
    def abandoned(self) -> bool:
        return self.future.done()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def lane_at(self, now: float, ageing_s: float) -> int:
        """Its lane now: one more urgent for every `ageing_s` it has waited."""
        if ageing_s <= 0:
            return self.lane
        return max(0, self.lane - int((now - self.submitted_at) / ageing_s))


@dataclass(eq=False)
class _Item(Generic[T, R]):
    request: _Request[T, R]
    index: int
    cost: int


@dataclass(eq=False)
class Batch(Generic[T, R]):
    """A batch handed out by `MicroBatcher.next_batch`: run the model on `items` and give
    the outputs back with `complete`, or the error with `fail`."""

    items: list[T]
    handed_out_at: float
    _entries: list[_Item[T, R]]

    @property
    def requests(self) -> list[_Request[T, R]]:
        return list(dict.fromkeys(entry.request for entry in self._entries))


class MicroBatcher(Generic[T, R]):
    """Open it (`async with`, which a runner does), queue requests with `enqueue` or
    `submit`, and pull batches with `next_batch`.

    Args:
        limits: when a batch closes.
        on_batch: called with each completed batch's figures (for metrics).
        clock: `time.monotonic` unless a test drives time.
    """

    def __init__(
        self,
        limits: BatchLimits,
        on_batch: Callable[[BatchStats], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._on_batch = on_batch
        self._clock = clock
        self._queue: deque[_Item[T, R]] = deque()
        self._in_flight: list[Batch[T, R]] = []
        self._arrived = asyncio.Event()
        self._open = False
        self._last_urgent_at = -float("inf")  # when a lane-0 request was last submitted

    async def __aenter__(self) -> MicroBatcher[T, R]:
        self._open = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close: every request still queued or in a batch not yet completed fails."""
        self._open = False
        stopped = RuntimeError("micro-batcher stopped")
        self._fail([item.request for item in self._queue], stopped)
        for batch in self._in_flight:
            self._fail(batch.requests, stopped)
        self._queue.clear()
        self._in_flight.clear()

    @property
    def queued_items(self) -> int:
        return len(self._queue)

    def queued_by_lane(self) -> dict[int, int]:
        """Items queued in each lane (as submitted, before ageing)."""
        lanes: dict[int, int] = {}
        for item in self._queue:
            lanes[item.request.lane] = lanes.get(item.request.lane, 0) + 1
        return lanes

    def queued_ahead_of(self, lane: int) -> int:
        """Items queued in `lane` or a more urgent one: what a new request there waits for."""
        return sum(1 for item in self._queue if item.request.lane <= lane)

    def queued_cost_ahead_of(self, lane: int) -> int:
        """The cost (for pairs: tokens) of the items `queued_ahead_of` counts."""
        return sum(item.cost for item in self._queue if item.request.lane <= lane)

    async def submit(
        self, items: Sequence[T], costs: Sequence[int], deadline: float | None = None
    ) -> Ticket[R]:
        """Queue one request's items and wait for all their outputs (see `enqueue`)."""
        return await self.enqueue(items, costs, deadline)

    def enqueue(
        self,
        items: Sequence[T],
        costs: Sequence[int],
        deadline: float | None = None,
        lane: int = 0,
    ) -> asyncio.Future[Ticket[R]]:
        """Queue one request's items now; the future resolves to all their outputs.

        `deadline` is on this batcher's clock (`time.monotonic` by default). The future
        raises DeadlineExceededError when it passes first, or the error a batch holding one of
        these items failed with. Cancel it to withdraw the request: its items still queued are
        never handed out. `lane`: 0 is the most urgent.

        Raises:
            ValueError: `items` and `costs` differ in length.
            RuntimeError: the batcher is not open (nothing would ever pull its batches).
        """
        if len(items) != len(costs):
            raise ValueError(f"{len(items)} items but {len(costs)} costs")
        self._require_open()
        future: asyncio.Future[Ticket[R]] = asyncio.get_running_loop().create_future()
        if not items:
            future.set_result(Ticket([], 0.0, 0.0, 0, 0))
            return future
        request: _Request[T, R] = _Request(
            items, self._clock(), deadline, future, lane, outputs=[None] * len(items)
        )
        self._queue.extend(_Item(request, i, cost) for i, cost in enumerate(costs))
        if lane == 0:
            self._last_urgent_at = request.submitted_at
        self._arrived.set()
        return future

    async def next_batch(self) -> Batch[T, R]:
        """Wait until a batch is due under the limits, and take it out of the queue.

        Raises:
            RuntimeError: the batcher is not open.
        """
        while True:
            self._require_open()
            await self._arrived.wait()
            await self._wait_for_fuller_batch()
            chosen = self._take_batch()
            if not self._queue:
                self._arrived.clear()
            if chosen:
                items = [item.request.items[item.index] for item in chosen]
                batch = Batch(items, self._clock(), chosen)
                self._in_flight.append(batch)
                return batch

    def complete(self, batch: Batch[T, R], outputs: Sequence[R]) -> None:
        """Hand back one output per item of `batch`, in order: each request whose last item
        this was is answered. The wrong number of outputs fails the batch instead."""
        if len(outputs) != len(batch.items):
            self.fail(batch, RuntimeError(f"model returned {len(outputs)} for {len(batch.items)}"))
            return
        self._forget(batch)
        seconds = self._clock() - batch.handed_out_at
        requests = batch.requests
        self._report(batch._entries, len(requests), seconds)
        for item, output in zip(batch._entries, outputs, strict=True):
            item.request.outputs[item.index] = output
            item.request.scored += 1
        self._settle(requests, len(batch.items), seconds)

    def fail(self, batch: Batch[T, R], error: Exception) -> None:
        """The model failed on `batch`: every request with an item in it fails with `error`;
        the rest of the queue is untouched."""
        self._forget(batch)
        self._fail(batch.requests, error)
        self._drop_unwanted()

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError(
                "micro-batcher is not running: open it (async with) and start a runner on it"
            )

    def _forget(self, batch: Batch[T, R]) -> None:
        if batch in self._in_flight:
            self._in_flight.remove(batch)

    async def _wait_for_fuller_batch(self) -> None:
        self._drop_unwanted()
        if not self._queue:
            return
        close_at = self._eligible()[0].request.submitted_at + self._limits.max_wait_s
        while not self._is_full() and (remaining := close_at - self._clock()) > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        self._arrived.set()

    def _eligible(self) -> list[_Item[T, R]]:
        """The queued items of the most urgent lane (ageing counted), oldest first."""
        now, ageing_s = self._clock(), self._limits.lane_ageing_s
        lanes = [item.request.lane_at(now, ageing_s) for item in self._queue]
        top = min(lanes, default=0)
        return [item for item, lane in zip(self._queue, lanes, strict=True) if lane == top]

    def _padded_token_limit(self, eligible: list[_Item[T, R]]) -> int:
        """`max_padded_tokens`, or `yield_padded_tokens` for a batch of a less urgent lane
        while urgent requests are about."""
        limits, now = self._limits, self._clock()
        lane = eligible[0].request.lane_at(now, limits.lane_ageing_s) if eligible else 0
        urgent_about = now - self._last_urgent_at <= limits.urgent_window_s
        if lane > 0 and urgent_about and limits.yield_padded_tokens:
            return min(limits.max_padded_tokens, limits.yield_padded_tokens)
        return limits.max_padded_tokens

    def _is_full(self) -> bool:
        eligible = self._eligible()
        window = eligible[: self._limits.window]
        padded = len(window) * max((item.cost for item in window), default=0)
        full_at = self._padded_token_limit(eligible)
        return len(window) >= self._limits.max_items or padded >= full_at

    def _drop_unwanted(self) -> None:
        """Forget items of callers that have gone; fail requests whose deadline has passed."""
        now = self._clock()
        for item in self._queue:
            request = item.request
            if not request.abandoned and request.expired(now):
                request.future.set_exception(DeadlineExceededError("deadline passed unscored"))
        self._queue = deque(item for item in self._queue if not item.request.abandoned)

    def _take_batch(self) -> list[_Item[T, R]]:
        self._drop_unwanted()
        if not self._queue:
            return []
        eligible = self._eligible()
        window = sorted(eligible[: self._limits.window], key=lambda item: item.cost)
        chosen = self._grow_around(
            window, window.index(eligible[0]), self._padded_token_limit(eligible)
        )
        taken = {id(item) for item in chosen}
        self._queue = deque(item for item in self._queue if id(item) not in taken)
        return chosen

    def _grow_around(
        self, window: list[_Item[T, R]], anchor: int, max_padded_tokens: int
    ) -> list[_Item[T, R]]:
        """From the anchor, add whichever cost-sorted neighbour wastes fewer padded tokens,
        while the batch stays within `max_items` and `max_padded_tokens`."""
        low, high = anchor, anchor
        longest = window[anchor].cost
        while high - low + 1 < self._limits.max_items:
            size = high - low + 1
            options = []
            if low > 0:  # a cheaper item: padded to the current longest
                options.append((longest - window[low - 1].cost, -1, longest))
            if high + 1 < len(window):  # a costlier item: pads everything to its cost
                cost = window[high + 1].cost
                options.append((size * (cost - longest), 1, cost))
            fitting = [o for o in options if (size + 1) * o[2] <= max_padded_tokens]
            if not fitting:
                break
            _, direction, longest = min(fitting)
            low, high = (low - 1, high) if direction < 0 else (low, high + 1)
        return window[low : high + 1]

    def _report(self, batch: list[_Item[T, R]], requests: int, seconds: float) -> None:
        if self._on_batch is None:
            return
        costs = [item.cost for item in batch]
        self._on_batch(
            BatchStats(len(batch), requests, sum(costs), len(costs) * max(costs), seconds)
        )

    def _settle(self, requests: list[_Request[T, R]], batch_items: int, seconds: float) -> None:
        for request in requests:
            request.inference_s += seconds
            if batch_items > request.largest_batch_items:
                request.largest_batch_items = batch_items
                request.largest_batch_requests = len(requests)
            if request.scored == len(request.items) and not request.future.done():
                request.future.set_result(
                    Ticket(
                        outputs=cast(list[R], request.outputs),
                        # All the time its items were queued, between batches included.
                        batch_wait_s=self._clock() - request.submitted_at - request.inference_s,
                        inference_s=request.inference_s,
                        largest_batch_items=request.largest_batch_items,
                        largest_batch_requests=request.largest_batch_requests,
                    )
                )

    def _fail(self, requests: list[_Request[T, R]], error: Exception) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)
