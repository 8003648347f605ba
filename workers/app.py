"""The worker processes' app: the FastStream broker, the workers' lifespan, and the two
long-running entry points (`rankstream up`, `rankstream worker KIND`).

Models load in the lifespan, before the broker pulls its first message; a worker is handed
its backends where the caller already has them (`up` indexes the sample with the same
embedder the retrieval worker serves with; tests hand in fakes).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from enum import StrEnum
from functools import partial
from pathlib import Path

from faststream.nats import NatsBroker
from faststream.nats.prometheus import NatsPrometheusMiddleware

from rankstream.cache import result_cache
from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.models.base import CrossEncoderBackend, Embedder
from rankstream.models.registry import load_embedder, load_reranker_tokenizer
from rankstream.retrieval.corpus import read_documents, sample_corpus_path
from rankstream.retrieval.store import DocumentStore
from rankstream.wire.connection import broker_kwargs, loggable_url
from rankstream.wire.streams import ensure_streams
from rankstream.workers.context import WorkerContext
from rankstream.workers.delivery import DeliveryGuard, watch_max_deliveries
from rankstream.workers.gateway.app import running_gateway
from rankstream.workers.health import Health, health_endpoints
from rankstream.workers.local import READY_LINE, EmbeddedNatsServer, NatsCluster
from rankstream.workers.logs import quiet_faststream_logger
from rankstream.workers.rerank import RerankWorker
from rankstream.workers.retrieval import RetrievalWorker

log = logging.getLogger(__name__)


class WorkerKind(StrEnum):
    RETRIEVAL = "retrieval"
    RERANK = "rerank"


BOTH = (WorkerKind.RETRIEVAL, WorkerKind.RERANK)
JETSTREAM_API_TIMEOUT_S = 20.0
Worker = RetrievalWorker | RerankWorker


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
    async with AsyncExitStack() as stack:
        cache = await stack.enter_async_context(result_cache(settings, metrics))
        context = WorkerContext(settings, broker, metrics, cache)
        workers: list[Worker] = [
            RetrievalWorker(context, embedder=embedder)
            if kind == WorkerKind.RETRIEVAL
            else RerankWorker(context, model=cross_encoder)
            for kind in kinds
        ]
        for worker in workers:
            await worker.start()
            stack.push_async_callback(worker.stop)
        await broker.start()
        stack.push_async_callback(broker.stop)
        log.info(
            "workers %s serving on %s",
            [k.value for k in kinds],
            loggable_url(settings.effective_nats_url),
        )
        yield workers


@asynccontextmanager
async def local_nats(
    settings: Settings, port: int | None, cluster: int = 0
) -> AsyncIterator[Settings]:
    """Settings pointing at NATS: the configured URL, or an embedded server started here,
    or with `cluster` > 1 that many clustered nodes on loopback and as many stream replicas
    (at most 5, JetStream's limit)."""
    if settings.nats_url:
        yield settings
        return
    if cluster > 1:
        with (
            tempfile.TemporaryDirectory(prefix="rankstream-cluster-") as store,
            NatsCluster(Path(store), size=cluster) as nodes,
        ):
            log.info("local nats cluster of %d nodes: %s", cluster, nodes.url)
            replicas = min(cluster, 5)
            yield settings.model_copy(update={"nats_url": nodes.url, "stream_replicas": replicas})
        return
    with EmbeddedNatsServer(port) as server:
        log.info("embedded nats-server with JetStream on %s", server.url)
        yield settings.model_copy(update={"nats_url": server.url})


def index_sample(settings: Settings, embedder: Embedder) -> int:
    """Embed the built-in sample corpus and upsert it into the configured table."""
    return DocumentStore.from_settings(settings).index(
        read_documents(sample_corpus_path()), embedder, load_reranker_tokenizer(settings)
    )


async def serve_workers(settings: Settings, kinds: Sequence[WorkerKind]) -> None:
    """`rankstream worker KIND`: serve until SIGINT/SIGTERM, with /metrics, /livez and
    /readyz on `settings.metrics_port` from the start (see workers/health.py)."""
    metrics = Metrics()
    async with health_endpoints(settings, metrics) as health:
        await _serve(settings, kinds, health, metrics)


async def serve_local_stack(settings: Settings, cluster: int = 0) -> None:
    """`rankstream up`: NATS (embedded unless configured; `cluster` > 1: that many clustered
    nodes), the sample corpus when the table does not exist yet, both workers, and the HTTP
    gateway on `gateway_port` (0: none). The embedder is loaded once, for both jobs."""
    metrics = Metrics()
    async with (
        health_endpoints(settings, metrics) as health,
        local_nats(settings, port=settings.embedded_nats_port, cluster=cluster) as settings,
    ):
        embedder = await asyncio.to_thread(load_embedder, settings)
        if not DocumentStore.from_settings(settings).exists():
            indexed = await asyncio.to_thread(index_sample, settings, embedder)
            log.info("indexed %d sample passages into table %r", indexed, settings.table)
        await _serve(settings, BOTH, health, metrics, embedder=embedder, gateway=True)


async def _serve(
    settings: Settings,
    kinds: Sequence[WorkerKind],
    health: Health,
    metrics: Metrics,
    embedder: Embedder | None = None,
    gateway: bool = False,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = build_broker(settings, metrics)
    health.watch_broker(broker)
    async with (
        running_workers(settings, kinds, broker=broker, metrics=metrics, embedder=embedder),
        # After the workers: they create the streams the gateway's client publishes into.
        running_gateway(settings) if gateway and settings.gateway_port else nullcontext(),
    ):
        await health.workers_started()  # /readyz may say 200 from here on
        log.info(READY_LINE)
        await stop.wait()
        health.stopping()
    log.info("stopped")
