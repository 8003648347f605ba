"""One real serving stack for a test module: the workers (real models, over the session's NATS
server and sample LanceDB) and the HTTP gateway in front of them, on a free port.

    settings = stack_settings(nats_url, sample_db, model_cache_dir, gateway_tokens=[...])
    async with serving(settings) as stack:
        ... stack.url ...

Only what a test run needs differs from the defaults: its own subject prefix (its streams are
its own on the shared NATS server), the sample store, the model cache, no metrics port,
the gateway on 127.0.0.1 and a free port, small JetStream bounds (every module's streams share
one server, which reserves a bounded stream's bytes on disk), and any `overrides`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.models.base import Embedder
from rankstream.workers.app import running_workers
from rankstream.workers.gateway.app import running_gateway


@dataclass(frozen=True)
class Stack:
    """A serving stack: the gateway's base URL, the workers' metrics, its settings."""

    url: str
    metrics: Metrics
    settings: Settings


def stack_settings(
    nats_url: str, sample_db: str, model_cache_dir: Path, **overrides: Any
) -> Settings:
    """Settings for a test's stack: the defaults, but for where it runs (see the module's
    docstring) and `overrides`."""
    fields: dict[str, Any] = {
        "nats_url": nats_url,
        "subject_prefix": f"g{uuid.uuid4().hex[:10]}",
        "lancedb_uri": sample_db,
        "model_cache_dir": model_cache_dir,
        "metrics_port": 0,
        "gateway_host": "127.0.0.1",
        "gateway_port": 0,
        "cache_max_bytes": 16 << 20,
        "results_max_bytes": 16 << 20,
        "dead_letters_max_bytes": 16 << 20,
    }
    return Settings(**(fields | overrides))


@asynccontextmanager
async def serving(
    settings: Settings, *, metrics: Metrics | None = None, embedder: Embedder | None = None
) -> AsyncIterator[Stack]:
    """Both workers and the gateway, until the block ends.

    Args:
        metrics: where the workers report (default: a new registry).
        embedder: a bi-encoder already loaded (default: loaded from the settings).
    """
    metrics = metrics or Metrics()
    async with (
        running_workers(settings, metrics=metrics, embedder=embedder),
        running_gateway(settings) as port,
    ):
        yield Stack(f"http://{settings.gateway_host}:{port}", metrics, settings)
