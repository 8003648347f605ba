"""The rerank worker's scheduler, model runner and model, measured in this process.

Its own module, importing neither LanceDB nor NATS, so that `rankstream bench` and the GPU
check (`rankstream.workers.tools.gpu_check`, on a machine that cannot carry LanceDB's wheel)
take the same measurement.
"""

from __future__ import annotations

import asyncio
import time

from rankstream.config import Settings
from rankstream.models.base import CrossEncoderBackend, Pair
from rankstream.scheduling.pair_scheduler import PairScheduler, rerank_batch_limits
from rankstream.workers.model_runner import ModelRunner


async def scheduler_pairs_per_s(
    model: CrossEncoderBackend,
    requests: list[list[Pair]],
    settings: Settings,
    clients: int,
    seconds: float,
) -> float:
    """Pairs/s of the rerank worker's scheduler, model runner and model in this process, fed
    by `clients` closed-loop requesters replaying `requests` (tokenized in a thread before
    they are queued, as the worker does): no NATS, no retrieval, no other process. Between it
    and the limit is what the scheduler loses; between it and the pipeline, what the work
    around the model costs it (decoding, transport, and sharing the cores)."""
    requests = [pairs for pairs in requests if pairs]
    if not requests:
        return 0.0

    scored = 0
    stop_at = time.perf_counter() + seconds

    async def one_client(offset: int) -> None:
        nonlocal scored
        position = offset
        while time.perf_counter() < stop_at:
            pairs = requests[position % len(requests)]
            encodings = await asyncio.to_thread(model.tokenizer.encode, pairs)
            await scheduler.submit(encodings)
            scored += len(pairs)
            position += clients

    started = time.perf_counter()
    scheduler = PairScheduler(rerank_batch_limits(settings))
    async with ModelRunner(scheduler.batcher, model.score, "bench:scheduler"):
        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return scored / (time.perf_counter() - started)
