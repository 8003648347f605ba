"""The floor under the pipeline's latency: one JetStream hop with no work on either side.

A query crosses three hops (queries, candidates, answer), each a publish that waits for the
stream's acknowledgement and a delivery to a consumer that was waiting for it. Timed here in
one process on the bench's own NATS server, with a file-stored stream like the pipeline's,
the consumer idle between messages as a worker is at low load.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
from nats.js.api import StorageType

from rankstream.config import Settings
from rankstream.wire.connection import connect_kwargs
from rankstream.workers.tools.stats import percentiles

HOP_SAMPLES = 40
IDLE_BETWEEN_S = 0.05
FETCH_TIMEOUT_S = 5.0


async def jetstream_hop_ms(settings: Settings, samples: int = HOP_SAMPLES) -> dict[str, float]:
    """p50/p95/p99 ms from the start of a publish to its delivery to a waiting pull."""
    connection = await nats.connect(**connect_kwargs(settings))
    js = connection.jetstream()
    name = f"HOP_{uuid.uuid4().hex[:8]}"
    subject = f"{settings.subject_prefix}.hop.{name}"
    await js.add_stream(name=name, subjects=[subject], storage=StorageType.FILE)
    latencies: list[float] = []
    try:
        consumer = await js.pull_subscribe(subject, durable=name)
        for _ in range(samples):
            delivered = asyncio.ensure_future(consumer.fetch(1, timeout=FETCH_TIMEOUT_S))
            await asyncio.sleep(IDLE_BETWEEN_S)
            started = time.perf_counter()
            await js.publish(subject, b"hop")
            (message,) = await delivered
            latencies.append((time.perf_counter() - started) * 1000)
            await message.ack()
    finally:
        await js.delete_stream(name)
        await connection.close()
    return percentiles(latencies)
