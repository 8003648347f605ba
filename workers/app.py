"""The worker processes' app: the FastStream broker, the workers' lifespan, and
`rankstream worker KIND`, which serves until a signal.

Models load in the lifespan, before the broker pulls its first message; a worker is handed
its backends where the caller already has them (`up` indexes the sample with the same
embedder the retrieval worker serves with; tests hand in fakes). A process imports the
worker module of each kind it runs, and no more: a rerank worker loads neither LanceDB nor
the retrieval worker, and no worker loads the HTTP gateway or the process harness (`up`'s
stack is `rankstream.workers.stack`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

import nats.errors
from faststream.nats import NatsBroker
from faststream.nats.prometheus import NatsPrometheusMiddleware

from rankstream.cache.store import result_cache
from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.models.base import CrossEncoderBackend, Embedder
from rankstream.planning.profile import served_profile
from rankstream.wire.connection import broker_kwargs, loggable_url
from rankstream.wire.streams import ensure_streams
from rankstream.workers.context import WorkerContext
from rankstream.workers.delivery import DeliveryGuard, HeldMessages, watch_max_deliveries
from rankstream.workers.health import Health, health_endpoints
from rankstream.workers.logs import READY_LINE, quiet_faststream_logger

if TYPE_CHECKING:
    from rankstream.workers.rerank import RerankWorker
    from rankstream.workers.retrieval import RetrievalWorker

log = logging.getLogger(__name__)


class WorkerKind(StrEnum):
    RETRIEVAL = "retrieval"
    RERANK = "rerank"


BOTH = (WorkerKind.RETRIEVAL, WorkerKind.RERANK)
JETSTREAM_API_TIMEOUT_S = 20.0
Worker: TypeAlias = "RetrievalWorker | RerankWorker"


def build_broker(settings: Settings, metrics: Metrics) -> NatsBroker:
    """The broker both workers subscribe on: NATS access from the settings, FastStream's
    Prometheus middleware on `metrics.registry`, and the delivery guard (ack/nak/term)."""
    broker = NatsBroker(
        **broker_kwargs(settings),
        middlewares=[NatsPrometheusMiddleware(registry=metrics.registry)],
        max_reconnect_attempts=-1,
        # nats-py's 5 s for a JetStream API call (consumer info at subscribe) was too short
        # for a worker starting beside three others on a loaded 3-node cluster.
        js_options={"timeout": JETSTREAM_API_TIMEOUT_S},
        logger=quiet_faststream_logger(),
        # On stop, wait this long for handlers to finish and acknowledge what they hold.
        graceful_timeout=settings.shutdown_grace_s,
    )
    broker.add_middleware(partial(DeliveryGuard, broker=broker, settings=settings, metrics=metrics))
    return broker


def new_worker(
    kind: WorkerKind,
    context: WorkerContext,
    embedder: Embedder | None = None,
    cross_encoder: CrossEncoderBackend | None = None,
) -> Worker:
    """A worker of `kind` on `context`, its module imported now: a rerank process never
    loads the retrieval worker's store (LanceDB), nor a retrieval process the rerank one."""
    if kind == WorkerKind.RETRIEVAL:
        from rankstream.workers.retrieval import RetrievalWorker

        return RetrievalWorker(context, embedder=embedder)
    from rankstream.workers.rerank import RerankWorker

    return RerankWorker(context, model=cross_encoder)


@asynccontextmanager
async def running_workers(
    settings: Settings,
    kinds: Sequence[WorkerKind] = BOTH,
    *,
    broker: NatsBroker | None = None,
    metrics: Metrics | None = None,
    embedder: Embedder | None = None,
    cross_encoder: CrossEncoderBackend | None = None,
) -> AsyncIterator[list[Worker]]:
    """Workers sharing one broker connection; models are loaded (or the given ones used)
    before any message is pulled.

    Args:
        broker: one from `build_broker` the caller watches (health checks); default: new.
        metrics: where the workers report; default: a new registry (the broker's, if given).
        embedder, cross_encoder: models already loaded; default: loaded from the settings.
    """
    metrics = metrics or Metrics()
    await ensure_streams(settings)
    broker = build_broker(settings, metrics) if broker is None else broker
    watch_max_deliveries(broker, settings, metrics)
    names = ", ".join(kind.value for kind in kinds)
    handed_back: list[int] = []
    async with AsyncExitStack() as stack:
        cache = await stack.enter_async_context(result_cache(settings, metrics))
        context = WorkerContext(settings, broker, metrics, cache)
        workers = [new_worker(kind, context, embedder, cross_encoder) for kind in kinds]
        for worker in workers:
            await worker.start()
            stack.push_async_callback(worker.stop)
        held = HeldMessages(broker, settings.fetch_wait_ms / 1000)
        await broker.start()
        stack.push_async_callback(stop_broker, broker)

        async def hand_back() -> None:  # first: what has not started goes back
            handed_back.append(await held.hand_back())

        stack.push_async_callback(hand_back)
        log.info("workers %s serving on %s", names, loggable_url(settings.effective_nats_url))
        yield workers
    log.info("workers %s stopped (%d fetched messages handed back)", names, sum(handed_back))


async def stop_broker(broker: NatsBroker) -> None:
    """Stop the broker's subscribers, wait for their handlers and drain its connection.

    While NATS is away there is nothing to drain: nats-py refuses to (a traceback ending in
    ConnectionReconnectingError, on every Ctrl-C of a worker whose server is gone). The
    connection is then closed as it is, with a warning: what the handlers did not
    acknowledge is redelivered once NATS is back."""
    try:
        await broker.stop()
    except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
        log.warning("NATS unreachable while stopping: closed the connection without draining")
        connection = broker._connection  # FastStream keeps it when the drain fails
        if connection is not None and not connection.is_closed:
            # nats-py flushes what was published meanwhile (naks) into the lost socket first.
            with contextlib.suppress(OSError):
                await connection.close()


async def serve_workers(settings: Settings, kinds: Sequence[WorkerKind]) -> None:
    """`rankstream worker KIND`: serve until SIGINT/SIGTERM, with /metrics, /livez and
    /readyz on `settings.metrics_port` from the start (see workers/health.py). A profile
    (`settings.profile`) that cannot be served stops it before anything starts."""
    served_profile(settings)
    metrics = Metrics()
    async with health_endpoints(settings, metrics) as health:
        await serve_until_signal(settings, kinds, health, metrics)
    metrics_stopped(settings)


def metrics_stopped(settings: Settings) -> None:
    """The stop line of the /metrics endpoint `health_endpoints` served, if it served one."""
    if settings.metrics_port:
        log.info("metrics on port %d stopped", settings.metrics_port)


async def serve_until_signal(
    settings: Settings,
    kinds: Sequence[WorkerKind],
    health: Health,
    metrics: Metrics,
    embedder: Embedder | None = None,
    alongside: AbstractAsyncContextManager[object] | None = None,
) -> None:
    """Run the workers of `kinds` until SIGINT/SIGTERM, logging `READY_LINE` once they serve.

    Args:
        embedder: a loaded embedder for the retrieval worker; default: loaded from settings.
        alongside: entered once the workers run (they create the streams it may publish
            into) and left before they stop: `up`'s HTTP gateway.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = build_broker(settings, metrics)
    health.watch_broker(broker)
    async with (
        running_workers(settings, kinds, broker=broker, metrics=metrics, embedder=embedder),
        alongside or nullcontext(),
    ):
        await health.workers_started()  # /readyz may say 200 from here on
        log.info(READY_LINE)
        await stop.wait()
        health.stopping()
