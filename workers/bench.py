"""`rankstream bench`: load through the real pipeline (worker processes, NATS, batcher), and in
the same run the two references it must be judged against, on the same model and inputs:
the model alone in a tight loop (the limit) and one model call per request (no batching);
and, between limit and pipeline, the rerank worker's batcher and model alone in process."""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shared.client import RankstreamClient
from shared.config import Settings
from shared.corpus import sample_corpus_path, sample_queries
from shared.errors import RankstreamError
from shared.evaluation import percentiles, read_queries
from shared.messages import RankedResult, StageTimings
from shared.models import CrossEncoderBackend, Pair, load_cross_encoder
from shared.nats_server import free_port
from workers.bench_transport import jetstream_hop_ms
from workers.indexing import ensure_indexed
from workers.pair_scheduler import PairScheduler
from workers.processes import WorkerProcess
from workers.runner import local_nats

MODEL_SAMPLE_PAIRS = 640  # pairs replayed in process for the limit and unbatched figures
SWEEP_PAIRS = 64  # pairs scored at each batch size of the sweep
SWEEP_MIN_S = 1.0
LOW_LOAD_SHARE = 0.25
RERANKER_MODEL_SECONDS = "rankstream_model_batch_seconds_sum"  # labelled model="reranker"


@dataclass(frozen=True)
class BenchOptions:
    data_dir: Path | None = None
    depth: int = 5
    concurrency: int = 32
    rate: float | None = None
    duration_s: float = 30.0
    low_load_duration_s: float = 45.0


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
                before = scrape(rerank_port)
                progress(f"closed loop: {options.concurrency} clients for {options.duration_s:g} s")
                saturated = await closed_loop(
                    client, texts, options.depth, options.concurrency, options.duration_s
                )
                batches = batch_figures(before, scrape(rerank_port), settings, saturated.wall_s)
                rss_mb = rerank.peak_rss_mb()
                low_rate = LOW_LOAD_SHARE * len(saturated.replies) / saturated.wall_s
                progress(f"open loop at 25% of saturation: {low_rate:.2f} queries/s")
                low = await open_loop(
                    client, texts, options.depth, low_rate, options.low_load_duration_s
                )
                progress("one bare JetStream hop, for the floor under those latencies")
                hop_ms = await jetstream_hop_ms(base)
                extra = None
                if options.rate is not None:
                    progress(f"open loop at {options.rate:g} queries/s")
                    extra = await open_loop(
                        client, texts, options.depth, options.rate, options.duration_s
                    )
    progress("model alone: tight loop and one call per request")
    model = await asyncio.to_thread(load_cross_encoder, settings)
    requests = [[(r.query, d.text) for d in r.results[: r.reranked]] for r in saturated.replies]
    limit, unbatched = await asyncio.to_thread(model_references, model, requests, settings)
    by_size = await asyncio.to_thread(
        pairs_per_s_by_batch_size, model, requests, settings.max_batch_pairs
    )
    progress("the rerank worker's batcher and model alone, in this process")
    scheduler = await scheduler_pairs_per_s(
        model, requests, settings, options.concurrency, options.duration_s / 2
    )
    report = _report(settings, options, saturated, low, extra, batches, limit, unbatched, rss_mb)
    return {
        **report,
        "scheduler_pairs_per_s": scheduler,
        "scheduler_vs_limit": scheduler / limit if limit else None,
        "model_pairs_per_s_by_batch_size": by_size,
        "jetstream_hop_ms": hop_ms,
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
    client: RankstreamClient, texts: Sequence[str], depth: int, clients: int, duration_s: float
) -> LoadRun:
    """`clients` loops, each sending its next query as soon as the last was answered."""
    run = LoadRun("closed", duration_s)
    stop_at = time.perf_counter() + duration_s
    started = time.perf_counter()

    async def one_client(offset: int) -> None:
        position = offset
        while time.perf_counter() < stop_at:
            await _ask(client, texts[position % len(texts)], depth, run)
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


async def _ask(client: RankstreamClient, text: str, depth: int, run: LoadRun) -> None:
    started = time.perf_counter()
    try:
        reply = await client.query(text, top_k=depth, depth=depth, timeout_s=120)
    except RankstreamError:
        run.errors += 1
        return
    run.latencies_ms.append((time.perf_counter() - started) * 1000)
    run.replies.append(reply)


def scrape(port: int) -> dict[str, float]:
    """The rerank worker's unlabelled metrics, and the reranker's model seconds."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    figures = {
        s.name: s.value for s in samples if s.name.startswith("rankstream_rerank_") and not s.labels
    }
    for s in samples:
        if s.name == RERANKER_MODEL_SECONDS and s.labels == {"model": "reranker"}:
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


def model_references(
    model: CrossEncoderBackend, requests: list[list[Pair]], settings: Settings
) -> tuple[float, float]:
    """Pairs/s of the model alone: batched as tightly as the limits allow, and per request."""
    sample: list[list[Pair]] = []
    for pairs in requests:
        if sum(len(p) for p in sample) >= MODEL_SAMPLE_PAIRS:
            break
        sample.append(pairs)
    flat = [pair for pairs in sample for pair in pairs]
    if not flat:
        return 0.0, 0.0
    costs = model.token_lengths(flat)
    tight = tight_batches(flat, costs, settings.max_batch_pairs, settings.max_batch_tokens)
    model.score(flat[:4])
    return _pairs_per_s(model, tight), _pairs_per_s(model, sample)


async def scheduler_pairs_per_s(
    model: CrossEncoderBackend,
    requests: list[list[Pair]],
    settings: Settings,
    clients: int,
    seconds: float,
) -> float:
    """Pairs/s of the rerank worker's scheduler and model in this process, fed by `clients`
    closed-loop requesters replaying `requests`: no NATS, no retrieval, no other process.
    Between it and the limit is what the scheduler loses; between it and the pipeline, what
    the work around the model costs it (decoding, transport, and sharing the cores)."""
    requests = [pairs for pairs in requests if pairs]
    if not requests:
        return 0.0

    scored = 0
    stop_at = time.perf_counter() + seconds

    async def one_client(offset: int) -> None:
        nonlocal scored
        position = offset
        while time.perf_counter() < stop_at:
            pairs = requests[position % len(requests)]
            await scheduler.submit(pairs)
            scored += len(pairs)
            position += clients

    started = time.perf_counter()
    async with PairScheduler(model, settings) as scheduler:
        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return scored / (time.perf_counter() - started)


def pairs_per_s_by_batch_size(
    model: CrossEncoderBackend, requests: list[list[Pair]], max_batch_pairs: int
) -> dict[int, float]:
    """The model alone at batch sizes 1, 2, 4 .. `max_batch_pairs`, on the SWEEP_PAIRS pairs
    nearest the median length (so there is next to no padding at any size, and the batch
    size is what varies). On a GPU this is where batching pays."""
    pairs = [pair for pairs in requests for pair in pairs][:MODEL_SAMPLE_PAIRS]
    if not pairs:
        return {}
    costs = model.token_lengths(pairs)
    median = sorted(costs)[len(costs) // 2]
    nearest = sorted(zip(costs, pairs, strict=True), key=lambda t: abs(t[0] - median))
    ordered = [pair for _, pair in sorted(nearest[:SWEEP_PAIRS], key=lambda t: t[0])]
    sizes = [2**k for k in range(max_batch_pairs.bit_length()) if 2**k <= max_batch_pairs]
    return {
        size: _sweep_point(model, [ordered[i : i + size] for i in range(0, len(ordered), size)])
        for size in sizes
    }


def _sweep_point(model: CrossEncoderBackend, batches: list[list[Pair]]) -> float:
    """One call that pays for the new shape, then at least SWEEP_MIN_S of whole passes (on a
    GPU one pass takes milliseconds)."""
    model.score(batches[-1])
    return _pairs_per_s(model, batches, min_seconds=SWEEP_MIN_S)


def tight_batches(
    pairs: list[Pair], costs: list[int], max_pairs: int, max_tokens: int
) -> list[list[Pair]]:
    """Sorted by length, cut where the next pair would break a limit: least padding possible."""
    if not pairs:
        return []
    batches: list[list[Pair]] = [[]]
    longest = 0
    for cost, pair in sorted(zip(costs, pairs, strict=True), key=lambda t: t[0]):
        size = len(batches[-1]) + 1
        if batches[-1] and (size > max_pairs or size * max(longest, cost) > max_tokens):
            batches.append([])
            longest = 0
        batches[-1].append(pair)
        longest = max(longest, cost)
    return batches


def _pairs_per_s(
    model: CrossEncoderBackend, batches: list[list[Pair]], min_seconds: float = 0.0
) -> float:
    """Pairs/s over whole passes through `batches`: one, or as many as `min_seconds` takes."""
    started, passes = time.perf_counter(), 0
    while passes == 0 or time.perf_counter() - started < min_seconds:
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
    limit: float,
    unbatched: float,
    rss_mb: float,
) -> dict[str, Any]:
    summary = saturated.summary()
    pipeline = summary["pairs_per_s"]
    return {
        "model": settings.reranker_model,
        "device": settings.device,
        "data": str(options.data_dir or "sample corpus"),
        "depth": options.depth,
        "concurrency": options.concurrency,
        "limit_pairs_per_s": limit,
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
