"""The gateway's probes against a real nats-server and real workers: `/livez` says the
process serves; `/readyz` (and `/health`, which load balancers probe) says ready only when
NATS is connected, the streams exist and a worker of each kind consumes them, read from
JetStream's view of the workers' durable consumers, with the reason when not."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rankstream.config import Settings
from rankstream.workers.app import WorkerKind, running_workers
from rankstream.workers.gateway.app import running_gateway

pytestmark = pytest.mark.integration

WAIT_S = 20.0


@pytest.fixture
def settings(nats_url: str, sample_db: str, model_cache_dir: Path) -> Settings:
    return Settings(
        nats_url=nats_url,
        subject_prefix=f"h{uuid.uuid4().hex[:10]}",
        lancedb_uri=sample_db,
        model_cache_dir=model_cache_dir,
        metrics_port=0,
        cache_ttl_s=0,
        cache_max_bytes=16 << 20,
        results_max_bytes=16 << 20,
        dead_letters_max_bytes=16 << 20,
        fetch_wait_ms=500,
        gateway_host="127.0.0.1",
        gateway_port=0,
        gateway_ready_cache_s=0.5,
    )


@pytest.fixture
async def gateways(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """A gateway that needs both kinds of worker, and one that needs rerank workers only."""
    rerank_only = settings.model_copy(update={"gateway_ready_workers": ["rerank"]})
    async with (
        running_gateway(settings) as port,
        running_gateway(rerank_only) as rerank_port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as both,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{rerank_port}", timeout=30) as rerank,
    ):
        yield both, rerank


async def probe_until(
    http: httpx.AsyncClient, status: int, path: str = "/readyz"
) -> dict[str, Any]:
    """The probe's body once it answers `status` (it is cached briefly, and a stopped
    worker's pull requests take a moment to go)."""
    give_up = time.monotonic() + WAIT_S
    while True:
        response = await http.get(path)
        if response.status_code == status or time.monotonic() > give_up:
            assert response.status_code == status, response.text
            body: dict[str, Any] = response.json()
            return body
        await asyncio.sleep(0.2)


async def test_ready_only_while_a_worker_of_each_kind_consumes_the_streams(
    settings: Settings, gateways: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    both, rerank_only = gateways

    # No workers yet: live, not ready; the streams they create do not exist.
    assert (await both.get("/livez")).json() == {"status": "ok"}
    for path in ("/readyz", "/health"):
        body = await probe_until(both, 503, path)
        assert body["status"] == "unavailable"
        assert body["checks"]["nats_connected"] is True
        assert body["checks"]["streams"] is False
        assert "does not exist: start the" in body["reason"]
    assert (await rerank_only.get("/readyz")).status_code == 503

    async with running_workers(settings, [WorkerKind.RERANK]):
        # Rerank workers only: the rerank-only gateway is ready, the other says what is
        # missing.
        ready = await probe_until(rerank_only, 200)
        assert ready["reason"] == "ready"
        assert ready["checks"] == {"nats_connected": True, "streams": True, "rerank_workers": True}
        waiting = ready["consumers"][f"{settings.subject_prefix.upper()}_RERANK/"
                                     f"{settings.subject_prefix}-rerank-direct"]  # fmt: skip
        assert waiting["num_waiting"] >= 1
        body = await probe_until(both, 503)
        assert body["checks"]["rerank_workers"] is True
        assert body["checks"]["retrieval_workers"] is False
        assert "retrieval worker" in body["reason"]

        async with running_workers(settings, [WorkerKind.RETRIEVAL]):
            for path in ("/readyz", "/health"):
                body = await probe_until(both, 200, path)
                assert body["status"] == "ok"
                assert all(body["checks"].values())

        # The retrieval workers stopped: their consumer stays, nobody pulls from it.
        body = await probe_until(both, 503, "/health")
        assert "no retrieval worker is consuming" in body["reason"]
        assert (await rerank_only.get("/readyz")).status_code == 200

    await probe_until(rerank_only, 503)
    assert (await both.get("/livez")).status_code == 200
