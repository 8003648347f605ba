"""Starting and stopping workers: against a configured NATS, or a local stack for `up`/`demo`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from enum import StrEnum

from faststream.nats import NatsBroker

from shared.config import Settings
from shared.connection import loggable_url
from shared.corpus import read_documents, sample_corpus_path
from shared.models import load_embedder
from shared.nats_server import EmbeddedNatsServer
from shared.store import DocumentStore
from shared.streams import ensure_streams
from workers.broker import build_broker
from workers.delivery import watch_max_deliveries
from workers.rerank import RerankWorker
from workers.retrieval import RetrievalWorker

log = logging.getLogger(__name__)


class WorkerKind(StrEnum):
    RETRIEVAL = "retrieval"
    RERANK = "rerank"


BOTH = (WorkerKind.RETRIEVAL, WorkerKind.RERANK)


@asynccontextmanager
async def running_workers(
    settings: Settings, kinds: Sequence[WorkerKind] = BOTH, broker: NatsBroker | None = None
) -> AsyncIterator[list[RetrievalWorker | RerankWorker]]:
    """Workers sharing one broker connection; models are loaded before any message is pulled.
    `broker`: one from `build_broker` the caller watches (health checks); default: a new one."""
    await ensure_streams(settings)
    broker = build_broker(settings) if broker is None else broker
    watch_max_deliveries(broker, settings)
    workers = [
        RetrievalWorker(settings, broker) if kind == WorkerKind.RETRIEVAL
        else RerankWorker(settings, broker)
        for kind in kinds
    ]  # fmt: skip
    async with AsyncExitStack() as stack:
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
async def local_nats(settings: Settings, port: int | None) -> AsyncIterator[Settings]:
    """Settings pointing at NATS: the configured URL, or an embedded server started here."""
    if settings.nats_url:
        yield settings
        return
    with EmbeddedNatsServer(port) as server:
        log.info("embedded nats-server with JetStream on %s", server.url)
        yield settings.model_copy(update={"nats_url": server.url})


def index_sample(settings: Settings) -> int:
    """Embed the built-in sample corpus and upsert it into the configured table."""
    store = DocumentStore(settings.lancedb_uri, settings.table, settings.ann_min_rows)
    return store.index(read_documents(sample_corpus_path()), load_embedder(settings))


async def index_sample_if_empty(settings: Settings) -> int:
    """Index the built-in sample corpus when the configured table does not exist yet."""
    store = DocumentStore(settings.lancedb_uri, settings.table, settings.ann_min_rows)
    if store.exists():
        return 0
    return await asyncio.to_thread(index_sample, settings)
