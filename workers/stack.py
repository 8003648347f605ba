"""`rankstream up`'s stack in one process: NATS (embedded, or a cluster on loopback, unless a
URL is configured), the sample corpus indexed, both workers and the HTTP gateway.

The tools (`demo`, `bench`, `eval`, `calibrate`) start their NATS here too. A worker process
(`rankstream worker KIND`, `rankstream.workers.app`) imports none of this.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar

from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.models.base import Embedder
from rankstream.models.registry import load_embedder, load_reranker_tokenizer
from rankstream.planning.profile import served_profile
from rankstream.retrieval.corpus import read_documents, sample_corpus_path
from rankstream.retrieval.store import DocumentStore
from rankstream.workers.app import BOTH, metrics_stopped, serve_until_signal
from rankstream.workers.gateway.app import running_gateway
from rankstream.workers.health import health_endpoints
from rankstream.workers.local import EmbeddedNatsServer, NatsCluster

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        log.info("nats cluster of %d nodes stopped", cluster)
        return
    with EmbeddedNatsServer(port, sync_interval=settings.nats_sync_interval) as server:
        log.info("embedded nats-server with JetStream on %s", server.url)
        yield settings.model_copy(update={"nats_url": server.url})
    log.info("nats-server stopped")


@asynccontextmanager
async def said_when_stopped(context: AbstractAsyncContextManager[T], what: str) -> AsyncIterator[T]:
    """`context`, and the line "`what` stopped" once it has."""
    async with context as value:
        yield value
    log.info("%s stopped", what)


def index_sample(settings: Settings, embedder: Embedder) -> int:
    """Embed the built-in sample corpus and upsert it into the configured table."""
    return DocumentStore.from_settings(settings).index(
        read_documents(sample_corpus_path()), embedder, load_reranker_tokenizer(settings)
    )


async def serve_local_stack(settings: Settings, cluster: int = 0) -> None:
    """`rankstream up`: NATS (embedded unless configured; `cluster` > 1: that many clustered
    nodes), the sample corpus when the table does not exist yet, both workers, and the HTTP
    gateway on `gateway_port` (0: none). The embedder is loaded once, for both jobs. The
    workers and the gateway serve `settings.profile`, when set, to requests that name no
    pipeline; a profile that cannot be served stops it before anything starts.

    On SIGINT/SIGTERM it stops in order, a line each: the gateway (no new requests), the
    workers (what they hold finished or handed back), NATS, and /metrics."""
    served_profile(settings)
    metrics = Metrics()
    async with (
        health_endpoints(settings, metrics) as health,
        local_nats(settings, port=settings.embedded_nats_port, cluster=cluster) as settings,
    ):
        embedder = await asyncio.to_thread(load_embedder, settings)
        if not DocumentStore.from_settings(settings).exists():
            indexed = await asyncio.to_thread(index_sample, settings, embedder)
            log.info("indexed %d sample passages into table %r", indexed, settings.table)
        gateway = (
            said_when_stopped(running_gateway(settings), "gateway")
            if settings.gateway_port
            else None
        )
        await serve_until_signal(settings, BOTH, health, metrics, embedder, alongside=gateway)
    metrics_stopped(settings)
