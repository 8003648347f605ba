"""The model runner: the only caller of a worker's model, off the event loop."""

from __future__ import annotations

import threading

from rankstream.scheduling.batcher import BatchLimits, MicroBatcher
from rankstream.workers.model_runner import ModelRunner


async def test_the_model_runs_in_a_thread_so_the_event_loop_never_blocks_on_it() -> None:
    event_loop_thread = threading.get_ident()
    model_threads: list[int] = []

    def model(items: list[str]) -> list[int]:
        model_threads.append(threading.get_ident())
        return [len(item) for item in items]

    limits = BatchLimits(max_items=4, max_padded_tokens=100, max_wait_s=0.0)
    batcher: MicroBatcher[str, int] = MicroBatcher(limits)
    async with ModelRunner(batcher, model):
        ticket = await batcher.submit(["a", "bbb"], [1, 3])
    assert ticket.outputs == [1, 3]
    assert model_threads
    assert event_loop_thread not in model_threads
