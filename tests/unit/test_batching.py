"""The micro-batcher: a queue a model runner pulls batches from. Here the runner's model is
a fake batch function: no NATS, no model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest

from rankstream.errors import DeadlineExceededError
from rankstream.scheduling.batcher import (
    BatchLimits,
    BatchStats,
    MicroBatcher,
)
from rankstream.scheduling.lanes import lane_name, priority_lane
from rankstream.workers.model_runner import ModelRunner


class RecordingProcess:
    """A batch function that doubles its inputs and remembers every batch it was given."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        time.sleep(self.delay_s)  # the runner calls it in a thread, as it does a model
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot process {self.fail_on}")
        return [2 * item for item in items]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(items: int = 8, tokens: int = 10_000, wait_s: float = 0.05) -> BatchLimits:
    return BatchLimits(max_items=items, max_padded_tokens=tokens, max_wait_s=wait_s)


@asynccontextmanager
async def served_by(
    process: Callable[[list[int]], Sequence[int]],
    batch_limits: BatchLimits,
    on_batch: Callable[[BatchStats], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[MicroBatcher[int, int]]:
    """A batcher, open, with a model runner pulling its batches into `process`."""
    batcher: MicroBatcher[int, int] = MicroBatcher(batch_limits, on_batch, clock)
    async with ModelRunner(batcher, process):
        yield batcher


async def test_the_queue_hands_out_a_due_batch_and_answers_requests_from_its_outputs() -> None:
    """Whoever pulls the batch runs the model: the batcher only queues, batches and answers."""
    async with MicroBatcher[int, int](limits(items=16, wait_s=0.0)) as batcher:
        a = batcher.enqueue([1, 2], [5, 5])
        b = batcher.enqueue([3], [5])
        batch = await batcher.next_batch()
        assert batch.items == [1, 2, 3]
        assert not a.done()
        batcher.complete(batch, [10, 20, 30])
        assert ((await a).outputs, (await b).outputs) == ([10, 20], [30])


async def test_a_failed_batch_fails_its_requests_with_the_models_error() -> None:
    async with MicroBatcher[int, int](limits(wait_s=0.0)) as batcher:
        request = batcher.enqueue([1], [1])
        batcher.fail(await batcher.next_batch(), ValueError("model broke"))
        with pytest.raises(ValueError, match="model broke"):
            await request


async def test_closing_the_batcher_fails_the_requests_of_a_batch_still_being_scored() -> None:
    """A worker that stops mid-batch answers its callers with an error, never leaves them
    waiting for outputs that will not come."""
    process = RecordingProcess(delay_s=0.2)
    async with served_by(process, limits(items=1, wait_s=0.0)) as batcher:
        in_model = batcher.enqueue([1], [1])
        queued = batcher.enqueue([2], [1])
        await asyncio.sleep(0.05)  # [1] is in the model now
    assert process.batches == [[1]]
    for request in (in_model, queued):
        with pytest.raises(RuntimeError, match="stopped"):
            await asyncio.wait_for(request, timeout=1)


async def test_concurrent_requests_share_one_batch_and_get_their_own_outputs() -> None:
    process = RecordingProcess()
    async with served_by(process, limits(items=16)) as batcher:
        a, b, c = await asyncio.gather(
            batcher.submit([1, 2], [5, 5]),
            batcher.submit([3], [5]),
            batcher.submit([4, 5, 6], [5, 5, 5]),
        )
    assert process.batches == [[1, 2, 3, 4, 5, 6]]
    assert (a.outputs, b.outputs, c.outputs) == ([2, 4], [6], [8, 10, 12])
    assert a.largest_batch_items == 6
    assert a.largest_batch_requests == 3


async def test_batches_never_exceed_the_item_limit_and_a_request_is_split_across_them() -> None:
    process = RecordingProcess()
    async with served_by(process, limits(items=4)) as batcher:
        big, small = await asyncio.gather(
            batcher.submit(list(range(10)), [1] * 10), batcher.submit([100], [1])
        )
    assert all(len(batch) <= 4 for batch in process.batches)
    assert big.outputs == [2 * i for i in range(10)]
    assert small.outputs == [200]
    assert sum(len(batch) for batch in process.batches) == 11


async def test_padded_token_budget_counts_items_times_the_longest() -> None:
    process = RecordingProcess()
    async with served_by(process, limits(items=100, tokens=300)) as batcher:
        await batcher.submit([1, 2, 3, 4], [100, 100, 50, 150])
    # 3 x 100 fits 300; adding 150 would make 4 x 150 = 600; then 150 alone.
    assert [sorted(batch) for batch in process.batches] == [[1, 2, 3], [4]]


async def test_an_item_over_the_token_budget_still_runs_alone() -> None:
    process = RecordingProcess()
    async with served_by(process, limits(tokens=10)) as batcher:
        ticket = await batcher.submit([7, 8], [50, 50])
    assert process.batches == [[7], [8]]
    assert ticket.outputs == [14, 16]


async def test_a_lone_request_is_served_after_max_wait_not_held_for_a_full_batch() -> None:
    process = RecordingProcess()
    async with served_by(process, limits(items=64, wait_s=0.05)) as batcher:
        ticket = await asyncio.wait_for(batcher.submit([1], [1]), timeout=2)
    assert ticket.outputs == [2]
    assert 0.04 <= ticket.batch_wait_s < 1.0


async def test_a_full_batch_does_not_wait_for_max_wait() -> None:
    process = RecordingProcess()
    async with served_by(process, limits(items=2, wait_s=10)) as batcher:
        ticket = await asyncio.wait_for(batcher.submit([1, 2], [1, 1]), timeout=2)
    assert ticket.batch_wait_s < 1.0


async def test_an_early_request_is_not_starved_by_a_stream_of_later_ones() -> None:
    process = RecordingProcess(delay_s=0.01)
    async with served_by(process, limits(items=4, wait_s=0.005)) as batcher:
        first = asyncio.create_task(batcher.submit(list(range(6)), [1] * 6))
        later = [asyncio.create_task(batcher.submit([1000 + i], [1])) for i in range(40)]
        await asyncio.wait_for(first, timeout=2)
        await asyncio.gather(*later)
    # Six items at four per batch: the first request rides in the first two batches only.
    assert sorted(process.batches[0] + process.batches[1])[:6] == list(range(6))
    assert first.result().outputs == [2 * i for i in range(6)]


async def test_a_failed_batch_fails_only_its_requests_and_the_batcher_keeps_serving() -> None:
    process = RecordingProcess(fail_on=13)
    async with served_by(process, limits(items=8, wait_s=0.01)) as batcher:
        with pytest.raises(ValueError, match="cannot process 13"):
            await batcher.submit([13], [1])
        ticket = await batcher.submit([1], [1])
    assert ticket.outputs == [2]


async def test_a_request_whose_caller_has_gone_never_reaches_the_batch_function() -> None:
    process = RecordingProcess(delay_s=0.05)
    async with served_by(process, limits(items=1, wait_s=0.0)) as batcher:
        running = asyncio.create_task(batcher.submit([1], [1]))
        await asyncio.sleep(0.01)  # [1] is in the model now
        abandoned = asyncio.create_task(batcher.submit([2], [1]))
        await asyncio.sleep(0.0)
        abandoned.cancel()
        await running
        await batcher.submit([3], [1])
    assert [2] not in process.batches
    assert process.batches == [[1], [3]]


async def test_every_batch_is_reported_with_its_real_and_padded_tokens() -> None:
    seen: list[BatchStats] = []
    async with served_by(RecordingProcess(), limits(), on_batch=seen.append) as batcher:
        await asyncio.gather(batcher.submit([1], [10]), batcher.submit([2], [30]))
    assert len(seen) == 1
    assert (seen[0].items, seen[0].requests) == (2, 2)
    assert (seen[0].real_tokens, seen[0].padded_tokens) == (40, 60)


async def test_a_batch_function_returning_the_wrong_count_is_an_error() -> None:
    def broken(items: list[int]) -> list[int]:
        return items[:-1]

    async with served_by(broken, limits()) as batcher:
        with pytest.raises(RuntimeError, match="returned 1 for 2"):
            await batcher.submit([1, 2], [1, 1])


async def test_submit_to_a_batcher_that_is_not_open_is_refused() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(limits())
    with pytest.raises(RuntimeError, match="not running"):
        await batcher.submit([1], [1])


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="invalid batch limits"):
        BatchLimits(max_items=0, max_padded_tokens=1, max_wait_s=0)


async def test_items_of_similar_cost_are_batched_together_to_cut_padding() -> None:
    seen: list[BatchStats] = []
    process = RecordingProcess()
    costs = {1: 10, 2: 500, 3: 12, 4: 480, 5: 11, 6: 505}
    async with served_by(process, limits(items=3), on_batch=seen.append) as batcher:
        await batcher.submit(list(costs), list(costs.values()))
    assert [sorted(batch) for batch in process.batches] == [[1, 3, 5], [2, 4, 6]]
    padded = sum(s.padded_tokens for s in seen)
    real = sum(s.real_tokens for s in seen)
    assert padded / real < 1.05  # first-come batches would pad 10-token items to 500


async def test_the_oldest_item_is_always_in_the_next_batch_however_costly() -> None:
    process = RecordingProcess(delay_s=0.01)
    async with served_by(process, limits(items=4, wait_s=0.02)) as batcher:
        costly = asyncio.create_task(batcher.submit([999], [500]))
        cheap = [asyncio.create_task(batcher.submit([i], [5])) for i in range(12)]
        await asyncio.gather(costly, *cheap)
    assert 999 in process.batches[0]


async def test_a_request_past_its_deadline_is_never_scored() -> None:
    process = RecordingProcess()
    async with served_by(process, limits()) as batcher:
        with pytest.raises(DeadlineExceededError):
            await batcher.submit([1, 2], [1, 1], deadline=time.monotonic() - 1)
        on_time = await batcher.submit([3], [1], deadline=time.monotonic() + 10)
    assert process.batches == [[3]]
    assert on_time.outputs == [6]


async def test_a_deadline_that_passes_while_queued_stops_the_remaining_items() -> None:
    process = RecordingProcess(delay_s=0.1)
    async with served_by(process, limits(items=2, wait_s=0.0)) as batcher:
        with pytest.raises(DeadlineExceededError):
            await batcher.submit([1, 2, 3, 4, 5, 6], [1] * 6, deadline=time.monotonic() + 0.15)
    assert len(process.batches) < 3


async def test_waiting_and_model_time_account_for_a_request_split_across_batches() -> None:
    process = RecordingProcess(delay_s=0.05)
    async with served_by(process, limits(items=2, wait_s=0.0)) as batcher:
        started = time.monotonic()
        ticket = await batcher.submit([1, 2, 3, 4, 5], [1] * 5)
        elapsed = time.monotonic() - started
    assert ticket.inference_s == pytest.approx(0.15, abs=0.05)  # three batches of 50 ms
    assert ticket.batch_wait_s + ticket.inference_s == pytest.approx(elapsed, abs=0.02)


async def test_the_most_urgent_lane_is_served_first_and_lanes_are_not_mixed() -> None:
    process = RecordingProcess(delay_s=0.02)
    lanes = BatchLimits(max_items=4, max_padded_tokens=10_000, max_wait_s=0.0, lane_ageing_s=0)
    async with served_by(process, lanes) as batcher:
        blocker = batcher.enqueue([0], [1])  # occupies the model while the rest queue up
        await asyncio.sleep(0.005)
        batch_work = batcher.enqueue([20, 21, 22], [1, 1, 1], lane=2)
        urgent = batcher.enqueue([10, 11], [1, 1], lane=0)
        await asyncio.gather(blocker, batch_work, urgent)
    assert process.batches == [[0], [10, 11], [20, 21, 22]]


async def test_waiting_raises_a_lane_so_batch_work_never_starves() -> None:
    clock = FakeClock()
    process = RecordingProcess()
    lanes = BatchLimits(max_items=1, max_padded_tokens=10_000, max_wait_s=0.0, lane_ageing_s=1.0)
    async with served_by(process, lanes, clock=clock) as batcher:
        old_batch = batcher.enqueue([2], [1], lane=2)
        clock.now += 2.5  # two lanes up: as urgent as lane 0 now, and older
        fresh = batcher.enqueue([0], [1], lane=0)
        await asyncio.gather(old_batch, fresh)
    assert process.batches == [[2], [0]]


def yielding_limits() -> BatchLimits:
    return BatchLimits(
        max_items=8, max_padded_tokens=8, max_wait_s=0.0, lane_ageing_s=0,
        yield_padded_tokens=2, urgent_window_s=60.0,
    )  # fmt: skip


async def test_batch_lane_batches_stay_short_while_interactive_requests_are_about() -> None:
    """A model call cannot be interrupted: while lane-0 requests come, a lower lane's batch
    is cut to `yield_padded_tokens`, so the next interactive request waits for less."""
    process = RecordingProcess(delay_s=0.01)
    async with served_by(process, yielding_limits()) as batcher:
        await batcher.enqueue([0], [1], lane=0)
        await batcher.enqueue(list(range(10, 16)), [1] * 6, lane=2)
    assert process.batches == [[0], [10, 11], [12, 13], [14, 15]]


async def test_batch_lane_batches_are_full_when_no_interactive_request_is_about() -> None:
    process = RecordingProcess()
    async with served_by(process, yielding_limits()) as batcher:
        await batcher.enqueue(list(range(10, 16)), [1] * 6, lane=2)
    assert process.batches == [[10, 11, 12, 13, 14, 15]]


def test_a_priority_maps_to_a_lane() -> None:
    assert [priority_lane(p) for p in (0, 333, 334, 667, 668, 999)] == [0, 0, 1, 1, 2, 2]
    assert [lane_name(lane) for lane in range(3)] == ["interactive", "standard", "batch"]
