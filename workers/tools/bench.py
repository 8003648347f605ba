"""`rankstream bench`: load through the real pipeline (worker processes, NATS, batcher), and in
the same run the two references it must be judged against, on the same model and inputs:
the model alone at its best batch shape (the limit) and one model call per request (no
batching); and, between limit and pipeline, the rerank worker's scheduler alone in process."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import RankstreamError
from rankstream.models.base import CrossEncoderBackend, Pair, PairEncoding
from rankstream.models.registry import load_cross_encoder
from rankstream.retrieval.corpus import sample_corpus_path, sample_queries
from rankstream.scheduling.packing import tight_batches
from rankstream.scheduling.pair_scheduler import rerank_batch_limits
from rankstream.wire.contract import RankedResult, StageTimings
from rankstream.workers.local import (
    PEAK_RSS_METRIC,
    EmbeddedNatsServer,
    WorkerProcess,
    free_port,
    metric_samples,
)
from rankstream.workers.stack import local_nats
from rankstream.workers.tools.bench_scheduler import scheduler_pairs_per_s
from rankstream.workers.tools.bench_transport import jetstream_hop_ms
from rankstream.workers.tools.evaluation import read_queries
from rankstream.workers.tools.indexing import ensure_indexed
from rankstream.workers.tools.stats import percentiles

MODEL_SAMPLE_PAIRS = 64  # pairs replayed in process for the model-alone figures
SHAPE_MIN_S = 1.0  # each batch shape is timed over whole passes for at least this long
LOW_LOAD_SHARE = 0.25
INTERACTIVE, BATCH = 0, 999  # priorities: the most urgent lane and the batch lane
PRIORITY_BATCH_CLIENTS = 8  # enough queued pairs to saturate, few enough to drain quickly
PRIORITY_PROBES = 5  # unloaded requests per lane
RERANKER_MODEL_SECONDS = "rankstream_model_batch_seconds_sum"  # labelled model="ce"
TOKEN_BUDGET_SHAPE = "token budget"
RETRIEVAL_ONLY_TOP_K = 10  # results a depth-0 (no rerank) query returns


@dataclass(frozen=True)
class BenchOptions:
    data_dir: Path | None = None
    depth: int = 5
    concurrency: int = 32
    rate: float | None = None
    duration_s: float = 30.0
    low_load_duration_s: float = 45.0
    priority_duration_s: float = 20.0  # the loaded priority phase; 0 skips it


@dataclass
class LoadRun:
    mode: str
    wall_s: float
    replies: list[RankedResult] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def pairs(self) -> int:
        return sum(r.reranked for r in self.replies)

    def summary(self) -> dict[str, Any]:
        stages = {
            stage: percentiles([getattr(r.timings_ms, stage) for r in self.replies] or [0.0])
            for stage in StageTimings.model_fields
        }
        pairs = list(zip(self.latencies_ms, self.replies, strict=True))
        beyond_model = [latency - r.timings_ms.inference for latency, r in pairs]
        # What the service adds: transport, queues and batching, not the two models or search.
        overhead = [
            latency - r.timings_ms.inference - r.timings_ms.embed - r.timings_ms.search
            for latency, r in pairs
        ]
        return {
            "mode": self.mode,
            "seconds": self.wall_s,
            "queries": len(self.replies),
            "errors": self.errors,
            "queries_per_s": len(self.replies) / self.wall_s,
            "pairs_per_s": self.pairs / self.wall_s,
            "latency_ms": percentiles(self.latencies_ms or [0.0]),
            "stage_ms": stages,
            "model_ms_p50": stages["inference"]["p50"],
            "latency_minus_model_ms_p50": percentiles(beyond_model or [0.0])["p50"],
            "service_overhead_ms_p50": percentiles(overhead or [0.0])["p50"],
        }


async def run_bench(
    settings: Settings, options: BenchOptions, progress: Callable[[str], None]
) -> dict[str, Any]:
    settings, texts = await _prepare_data(settings, options, progress)
    async with local_nats(settings, port=None) as settings:
        rerank_port = free_port()
        base = settings.model_copy(update={"subject_prefix": f"bench{uuid.uuid4().hex[:8]}"})
        with (
            WorkerProcess("retrieval", base.model_copy(update={"metrics_port": free_port()})),
            WorkerProcess(
                "rerank", base.model_copy(update={"metrics_port": rerank_port})
            ) as rerank,
        ):
            progress("workers ready; warming up")
            async with RankstreamClient(base) as client:
                await closed_loop(client, texts, options.depth, options.concurrency, 3.0)
                before, cpu_before = scrape(rerank_port), rerank.cpu_seconds()
                progress(f"closed loop: {options.concurrency} clients for {options.duration_s:g} s")
                saturated = await closed_loop(
                    client, texts, options.depth, options.concurrency, options.duration_s
                )
                cpu_s = rerank.cpu_seconds() - cpu_before
                after = scrape(rerank_port)
                batches = batch_figures(before, after, settings, saturated.wall_s)
                rss_mb = after.get(PEAK_RSS_METRIC, 0.0) / 2**20
                low_rate = LOW_LOAD_SHARE * len(saturated.replies) / saturated.wall_s
                progress(f"open loop at 25% of saturation: {low_rate:.2f} queries/s")
                low = await open_loop(
                    client, texts, options.depth, low_rate, options.low_load_duration_s
                )
                progress("one bare JetStream hop, for the floor under those latencies")
                hop_ms = await jetstream_hop_ms(base)
                priority = None
                if options.priority_duration_s > 0:
                    progress(
                        f"priority lanes: batch traffic ({PRIORITY_BATCH_CLIENTS} clients) for "
                        f"{options.priority_duration_s:g} s, interactive requests among it"
                    )
                    priority = await priority_phase(
                        client, texts, options.depth, options.priority_duration_s
                    )
                extra = None
                if options.rate is not None:
                    progress(f"open loop at {options.rate:g} queries/s")
                    extra = await open_loop(
                        client, texts, options.depth, options.rate, options.duration_s
                    )
    progress("model alone: every batch shape, and one call per request")
    model = await asyncio.to_thread(load_cross_encoder, settings)
    requests = [  # the bench asks for the texts: every result has one
        [(r.query, d.text or "") for d in r.results[: r.reranked]] for r in saturated.replies
    ]
    references = await asyncio.to_thread(model_references, model, requests, settings)
    progress("the rerank worker's scheduler and model alone, in this process")
    scheduler = await scheduler_pairs_per_s(
        model, requests, settings, options.concurrency, options.duration_s / 2
    )
    report = _report(settings, options, saturated, low, extra, batches, references, rss_mb)
    limit = references.limit
    return {
        **report,
        "rerank_cpu_s_per_1000_pairs": 1000 * cpu_s / max(1, saturated.pairs),
        "scheduler_pairs_per_s": scheduler,
        "scheduler_vs_limit": scheduler / limit if limit else None,
        "jetstream_hop_ms": hop_ms,
        **(priority or {}),
    }


async def run_sync_bench(
    settings: Settings,
    sync_intervals: Sequence[str],
    depths: Sequence[int],
    options: BenchOptions,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The cost of JetStream's fsync policy: the same closed-loop load at each depth against
    a fresh embedded server per `sync_interval` (`always`, `default`, a duration), one after
    the other; one row per (sync_interval, depth) with latency percentiles and throughput."""
    settings, texts = await _prepare_data(settings, options, progress)
    rows = []
    for sync_interval in sync_intervals:
        with EmbeddedNatsServer(sync_interval=sync_interval) as server:
            base = settings.model_copy(
                update={"nats_url": server.url, "subject_prefix": f"bench{uuid.uuid4().hex[:8]}"}
            )
            with (
                WorkerProcess("retrieval", base.model_copy(update={"metrics_port": free_port()})),
                WorkerProcess("rerank", base.model_copy(update={"metrics_port": free_port()})),
            ):
                async with RankstreamClient(base) as client:
                    await closed_loop(client, texts, max(depths), options.concurrency, 3.0)
                    for depth in depths:
                        progress(f"sync_interval {sync_interval}, depth {depth}")
                        run = await closed_loop(
                            client, texts, depth, options.concurrency, options.duration_s
                        )
                        summary = run.summary()
                        figures = ("queries", "errors", "queries_per_s", "latency_ms")
                        rows.append({
                            "sync_interval": sync_interval, "depth": depth,
                            "concurrency": options.concurrency,
                            **{figure: summary[figure] for figure in figures},
                        })  # fmt: skip
    return rows


async def priority_phase(
    client: RankstreamClient, texts: Sequence[str], depth: int, duration_s: float
) -> dict[str, Any]:
    """p50 latency per lane, unloaded (one request at a time) and loaded (interactive
    requests one at a time while batch-lane clients keep the rerank worker saturated).

    Returns `priority_p50_ms` {lane: {unloaded, loaded}}, the interactive loaded/unloaded
    ratio (the issue's bar: within 2x), and how many batch requests completed meanwhile."""
    unloaded = {}
    for name, priority in (("interactive", INTERACTIVE), ("batch", BATCH)):
        probe = LoadRun(f"unloaded-{name}", 0.0)
        for i in range(PRIORITY_PROBES):
            await _ask(client, texts[i % len(texts)], depth, probe, priority)
        unloaded[name] = percentiles(probe.latencies_ms or [0.0])["p50"]
    interactive = LoadRun("loaded-interactive", duration_s)
    batch_load = asyncio.create_task(
        closed_loop(client, texts, depth, PRIORITY_BATCH_CLIENTS, duration_s, BATCH)
    )
    await asyncio.sleep(min(2.0, duration_s / 4))  # let the batch queue build up first
    position = 0
    while not batch_load.done() and position < 10_000:
        await _ask(client, texts[position % len(texts)], depth, interactive, INTERACTIVE)
        position += 1
    batch = await batch_load
    loaded = {
        "interactive": percentiles(interactive.latencies_ms or [0.0])["p50"],
        "batch": percentiles(batch.latencies_ms or [0.0])["p50"],
    }
    return {
        "priority_p50_ms": {
            lane: {"unloaded": unloaded[lane], "loaded": loaded[lane]} for lane in unloaded
        },
        "priority_interactive_loaded_vs_unloaded": (
            loaded["interactive"] / unloaded["interactive"] if unloaded["interactive"] else None
        ),
        "priority_batch_completed": len(batch.replies),
        "priority_batch_errors": batch.errors,
        "priority_interactive_requests": len(interactive.replies),
    }


async def _prepare_data(
    settings: Settings, options: BenchOptions, progress: Callable[[str], None]
) -> tuple[Settings, list[str]]:
    from rich.console import Console

    console = Console(stderr=True)
    if options.data_dir is None:
        indexed = await asyncio.to_thread(ensure_indexed, settings, sample_corpus_path(), console)
        return indexed, [q.text for q in sample_queries()]
    indexed = await asyncio.to_thread(ensure_indexed, settings, options.data_dir, console)
    return indexed, list(read_queries(options.data_dir).values())


async def closed_loop(
    client: RankstreamClient,
    texts: Sequence[str],
    depth: int,
    clients: int,
    duration_s: float,
    priority: int = INTERACTIVE,
) -> LoadRun:
    """`clients` loops, each sending its next query (at `priority`) as soon as the last was
    answered."""
    run = LoadRun("closed", duration_s)
    stop_at = time.perf_counter() + duration_s
    started = time.perf_counter()

    async def one_client(offset: int) -> None:
        position = offset
        while time.perf_counter() < stop_at:
            await _ask(client, texts[position % len(texts)], depth, run, priority)
            position += clients

    await asyncio.gather(*(one_client(i) for i in range(clients)))
    run.wall_s = time.perf_counter() - started
    return run


async def open_loop(
    client: RankstreamClient, texts: Sequence[str], depth: int, rate: float, duration_s: float
) -> LoadRun:
    """Poisson arrivals at `rate` queries/s for `duration_s`, whatever the answers do."""
    run = LoadRun(f"open@{rate:.2f}/s", duration_s)
    arrivals = random.Random(0)
    started = time.perf_counter()
    pending = []
    position = 0
    while (now := time.perf_counter()) < started + duration_s:
        pending.append(asyncio.create_task(_ask(client, texts[position % len(texts)], depth, run)))
        position += 1
        await asyncio.sleep(max(0.0, arrivals.expovariate(rate) - (time.perf_counter() - now)))
    await asyncio.gather(*pending)
    run.wall_s = time.perf_counter() - started
    return run


async def _ask(
    client: RankstreamClient, text: str, depth: int, run: LoadRun, priority: int = INTERACTIVE
) -> None:
    started = time.perf_counter()
    try:
        reply = await client.query(
            text,
            top_k=depth or RETRIEVAL_ONLY_TOP_K,
            depth=depth,
            timeout_s=120,
            cache=False,
            priority=priority,
        )
    except RankstreamError:
        run.errors += 1
        return
    run.latencies_ms.append((time.perf_counter() - started) * 1000)
    run.replies.append(reply)


def scrape(port: int) -> dict[str, float]:
    """The rerank worker's unlabelled metrics, and the reranker's model seconds."""
    samples = metric_samples(port)
    figures = {
        s.name: s.value
        for s in samples
        if (s.name.startswith("rankstream_rerank_") or s.name == PEAK_RSS_METRIC) and not s.labels
    }
    for s in samples:
        if s.name == RERANKER_MODEL_SECONDS and s.labels == {"model": "ce"}:
            figures[s.name] = s.value
    return figures


def batch_figures(
    before: dict[str, float], after: dict[str, float], settings: Settings, wall_s: float
) -> dict[str, float]:
    """Batch fill and padding; and where pipeline pairs/s goes: the share of the wall time
    the model was running, times its speed while running (pairs per model second)."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = max(1.0, delta("rankstream_rerank_batch_pairs_count"))
    pairs = delta("rankstream_rerank_batch_pairs_sum")
    padded = delta("rankstream_rerank_padded_tokens_total")
    real = max(1.0, delta("rankstream_rerank_real_tokens_total"))
    return {
        "batches": batches,
        "pairs_per_batch": pairs / batches,
        "pair_fill": pairs / batches / settings.max_batch_pairs,
        "token_fill": padded / batches / settings.max_batch_tokens,
        "padding_ratio": padded / real,
        "model_busy_share": delta(RERANKER_MODEL_SECONDS) / wall_s,
        "pairs_per_model_s": pairs / max(1e-9, delta(RERANKER_MODEL_SECONDS)),
    }


@dataclass(frozen=True)
class ModelReferences:
    """The model alone on one sample of the run's pairs, encoded once before any timing:
    pairs/s in each batch shape tried, the best of them (the limit), and one call per
    request as the requests came (the unbatched figure)."""

    by_shape: dict[str, float]
    unbatched: float

    @property
    def limit(self) -> float:
        return max(self.by_shape.values(), default=0.0)

    @property
    def limit_shape(self) -> str:
        return max(self.by_shape, key=lambda shape: self.by_shape[shape], default="")

    @property
    def by_batch_size(self) -> dict[str, float]:
        return {shape: v for shape, v in self.by_shape.items() if shape != TOKEN_BUDGET_SHAPE}


def model_references(
    model: CrossEncoderBackend, requests: list[list[Pair]], settings: Settings
) -> ModelReferences:
    """Batch shapes: the length-sorted sample cut into batches of 1, 2, 4 .. max_batch_pairs
    pairs (little padding at any size, so the size is what varies; on a GPU this is where
    batching pays), and cut as the token budget allows (`tight_batches`)."""
    sample: list[list[Pair]] = []
    for pairs in requests:
        if sum(len(p) for p in sample) >= MODEL_SAMPLE_PAIRS:
            break
        if pairs:
            sample.append(pairs)
    per_request = [model.tokenizer.encode(pairs) for pairs in sample]
    flat = sorted((e for encodings in per_request for e in encodings), key=len)
    if not flat:
        return ModelReferences({}, 0.0)
    limits = rerank_batch_limits(settings)
    sizes = [2**k for k in range(limits.max_items.bit_length()) if 2**k <= limits.max_items]
    shapes = {str(size): [flat[i : i + size] for i in range(0, len(flat), size)] for size in sizes}
    shapes[TOKEN_BUDGET_SHAPE] = tight_batches(
        flat, [len(e) for e in flat], limits.max_items, limits.max_padded_tokens
    )
    by_shape = {name: _shape_pairs_per_s(model, batches) for name, batches in shapes.items()}
    return ModelReferences(by_shape, _shape_pairs_per_s(model, per_request))


def _shape_pairs_per_s(model: CrossEncoderBackend, batches: list[list[PairEncoding]]) -> float:
    """One call that pays for the new shape, then whole passes through `batches` for at
    least SHAPE_MIN_S."""
    model.score(batches[-1])
    started, passes = time.perf_counter(), 0
    while passes == 0 or time.perf_counter() - started < SHAPE_MIN_S:
        for batch in batches:
            model.score(batch)
        passes += 1
    return passes * sum(len(b) for b in batches) / (time.perf_counter() - started)


def _report(
    settings: Settings,
    options: BenchOptions,
    saturated: LoadRun,
    low: LoadRun,
    extra: LoadRun | None,
    batches: dict[str, float],
    references: ModelReferences,
    rss_mb: float,
) -> dict[str, Any]:
    summary = saturated.summary()
    pipeline = summary["pairs_per_s"]
    limit, unbatched = references.limit, references.unbatched
    return {
        "model": settings.reranker_model,
        "device": settings.device,
        "data": str(options.data_dir or "sample corpus"),
        "depth": options.depth,
        "concurrency": options.concurrency,
        "limit_pairs_per_s": limit,
        "limit_batch_shape": references.limit_shape,
        "model_pairs_per_s_by_batch_size": references.by_batch_size,
        "model_pairs_per_s_by_shape": references.by_shape,
        "pipeline_pairs_per_s": pipeline,
        "unbatched_pairs_per_s": unbatched,
        "pipeline_vs_limit": pipeline / limit if limit else None,
        "pipeline_vs_unbatched": pipeline / unbatched if unbatched else None,
        "queries_per_s": summary["queries_per_s"],
        "latency_ms": summary["latency_ms"],
        "stage_ms": summary["stage_ms"],
        "model_ms_p50": summary["model_ms_p50"],
        "padding_ratio": batches["padding_ratio"],
        "batch": batches,
        "rerank_worker_rss_mb": rss_mb,
        "errors": saturated.errors + low.errors,
        "low_load": {"offered_share_of_saturation": LOW_LOAD_SHARE, **low.summary()},
        "open_loop": extra.summary() if extra is not None else None,
    }
