"""Long-running entry points: `rankstream up` and `rankstream worker KIND`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from shared.config import Settings
from workers.broker import build_broker
from workers.health import Health, health_endpoints
from workers.runner import BOTH, WorkerKind, index_sample_if_empty, local_nats, running_workers

log = logging.getLogger(__name__)


async def serve_workers(settings: Settings, kinds: Sequence[WorkerKind]) -> None:
    """Serve until SIGINT/SIGTERM, with /metrics, /livez and /readyz on
    `settings.metrics_port` from the start (see workers/health.py)."""
    async with health_endpoints(settings) as health:
        await _serve(settings, kinds, health)


async def serve_local_stack(settings: Settings) -> None:
    """`rankstream up`: NATS (embedded unless configured), the sample corpus if the table is
    empty, and both workers."""
    async with (
        health_endpoints(settings) as health,
        local_nats(settings, port=settings.embedded_nats_port) as settings,
    ):
        indexed = await index_sample_if_empty(settings)
        if indexed:
            log.info("indexed %d sample passages into table %r", indexed, settings.table)
        await _serve(settings, BOTH, health)


async def _serve(settings: Settings, kinds: Sequence[WorkerKind], health: Health) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = build_broker(settings)
    health.watch_broker(broker)
    async with running_workers(settings, kinds, broker=broker):
        await health.workers_started()  # /readyz may say 200 from here on
        log.info("ready; Ctrl-C to stop")
        await stop.wait()
        health.stopping()
    log.info("stopped")
