"""Long-running entry points: `rankstream up` and `rankstream worker KIND`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from prometheus_client import start_http_server

from shared.config import Settings
from workers.runner import BOTH, WorkerKind, index_sample_if_empty, local_nats, running_workers

log = logging.getLogger(__name__)


async def serve_workers(settings: Settings, kinds: Sequence[WorkerKind]) -> None:
    """Serve until SIGINT/SIGTERM, with Prometheus /metrics on `settings.metrics_port`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0")
        log.info("metrics on http://127.0.0.1:%d/metrics", settings.metrics_port)
    async with running_workers(settings, kinds):
        log.info("ready; Ctrl-C to stop")
        await stop.wait()
    log.info("stopped")


async def serve_local_stack(settings: Settings) -> None:
    """`rankstream up`: NATS (embedded unless configured), the sample corpus if the table is
    empty, and both workers."""
    async with local_nats(settings, port=settings.embedded_nats_port) as settings:
        indexed = await index_sample_if_empty(settings)
        if indexed:
            log.info("indexed %d sample passages into table %r", indexed, settings.table)
        await serve_workers(settings, BOTH)
