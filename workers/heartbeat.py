"""Telling JetStream a message is still being worked on, so it is not redelivered mid-work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream.nats.message import NatsMessage


@asynccontextmanager
async def in_progress_heartbeats(message: NatsMessage, every_s: float) -> AsyncIterator[None]:
    """Send `+WPI` (in progress) every `every_s` seconds while the block runs: a request
    waiting for a long batch resets its ack-wait timer instead of being redelivered."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(Exception):  # a lost heartbeat only risks a redelivery
                await message.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
