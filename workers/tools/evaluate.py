"""`rankstream eval`: every query of a BEIR split through the running pipeline, once per
configuration (retrieval only, then each rerank depth), scored and timed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import RankstreamError
from rankstream.wire.messages import ErrorResult
from rankstream.workers.app import local_nats, running_workers
from rankstream.workers.tools.eval_report import (
    BASELINE,
    ConfigRun,
    QueryOutcome,
    summarize,
    write_outputs,
)
from rankstream.workers.tools.evaluation import read_qrels, read_queries
from rankstream.workers.tools.indexing import ensure_indexed

RESULTS_PER_QUERY = 100  # Recall@100 needs a hundred results
WARM_UP_QUERIES = 4


@dataclass(frozen=True)
class EvalOptions:
    data_dir: Path
    out_dir: Path
    split: str = "test"
    depths: tuple[int, ...] = (10, 20, 50, 100)
    concurrency: int = 8
    limit: int | None = None
    relevance_threshold: int = 1
    timeout_s: float = 600.0


async def run_eval(settings: Settings, options: EvalOptions, console: Console) -> Path:
    """Index (or reuse), run every configuration, write the report; returns the report path."""
    queries = read_queries(options.data_dir)
    qrels = read_qrels(options.data_dir, options.split)
    query_ids = [qid for qid in queries if qid in qrels][: options.limit]
    if not query_ids:
        raise RankstreamError(f"no query of {options.data_dir} has {options.split} judgments")
    settings = await asyncio.to_thread(ensure_indexed, settings, options.data_dir, console)
    configurations = [(BASELINE, 0), *((f"rerank-d{d}", d) for d in options.depths)]
    async with (
        local_nats(settings, port=None) as settings,
        running_workers(settings),
        RankstreamClient(settings) as client,
    ):
        await _warm_up(client, [queries[q] for q in query_ids[:WARM_UP_QUERIES]], options)
        runs = [
            await _run_configuration(client, name, depth, queries, query_ids, options, console)
            for name, depth in configurations
        ]
    summaries = summarize(runs, qrels, options.relevance_threshold)
    write_outputs(options.out_dir, runs, summaries, _about(settings, options, len(query_ids)))
    return options.out_dir / "report.md"


async def _warm_up(client: RankstreamClient, texts: Sequence[str], options: EvalOptions) -> None:
    depth = max(options.depths, default=0)
    await asyncio.gather(*(client.send(client.request(t, 10, depth, 120)) for t in texts))


async def _run_configuration(
    client: RankstreamClient,
    name: str,
    depth: int,
    queries: dict[str, str],
    query_ids: list[str],
    options: EvalOptions,
    console: Console,
) -> ConfigRun:
    in_flight = asyncio.Semaphore(options.concurrency)

    async def one(query_id: str) -> QueryOutcome:
        async with in_flight:
            outcome = await _ask(client, query_id, queries[query_id], depth, options.timeout_s)
            progress.advance(task)
            return outcome

    with Progress(console=console) as progress:
        task = progress.add_task(f"{name:>12}", total=len(query_ids))
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(q) for q in query_ids))
        wall_s = time.perf_counter() - started
    failed = sum(o.error is not None for o in outcomes)
    if failed:
        console.print(f"[yellow]{name}: {failed} queries failed[/yellow]")
    return ConfigRun(name, depth, list(outcomes), wall_s)


async def _ask(
    client: RankstreamClient, query_id: str, text: str, depth: int, timeout_s: float
) -> QueryOutcome:
    request = client.request(text, top_k=max(RESULTS_PER_QUERY, depth), depth=depth,
                             timeout_s=timeout_s)  # fmt: skip
    started = time.perf_counter()
    try:
        reply = await client.send(request)
    except RankstreamError as error:
        return QueryOutcome(query_id, [], 0.0, error=str(error))
    latency_ms = (time.perf_counter() - started) * 1000
    if isinstance(reply, ErrorResult):
        return QueryOutcome(query_id, [], latency_ms, error=f"{reply.code}: {reply.message}")
    return QueryOutcome(
        query_id,
        [doc.doc_id for doc in reply.results],
        latency_ms,
        timings=reply.timings_ms,
        reranked=reply.reranked,
    )


def _about(settings: Settings, options: EvalOptions, query_count: int) -> dict[str, object]:
    return {
        "collection": options.data_dir.resolve().name,
        "split": options.split,
        "queries": query_count,
        "concurrency": options.concurrency,
        "relevance_threshold": options.relevance_threshold,
        "embedder_model": settings.embedder_model,
        "reranker_model": settings.reranker_model,
        "max_length": settings.max_length,
        "table": settings.table,
    }
