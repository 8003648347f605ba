"""`rankstream eval`: every query of a BEIR split through the running pipeline (NATS, both
workers as processes, the micro-batcher), once per pipeline configuration, scored, timed and
costed; optionally replayed with a Zipf-distributed repeat of the queries to measure the
result cache."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
from rich.console import Console
from rich.progress import Progress

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import RankstreamError
from rankstream.wire.connection import connect_kwargs
from rankstream.wire.contract import ErrorResult, QueryRequest
from rankstream.wire.pipeline import PipelineSpec
from rankstream.wire.subjects import Subjects
from rankstream.workers.local import WorkerProcess
from rankstream.workers.stack import local_nats
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.eval_report import (
    ConfigRun,
    QueryOutcome,
    ReplayRun,
    summarize,
    write_outputs,
)
from rankstream.workers.tools.evaluation import read_qrels, read_queries
from rankstream.workers.tools.indexing import ensure_indexed

RESULTS_PER_QUERY = 100  # Recall@100 needs a hundred results
WARM_UP_QUERIES = 4
DEFAULT_CONFIGS = "dense,bm25,hybrid,dense+ce@10,hybrid+ce@10,hybrid+ce@20"


@dataclass(frozen=True)
class EvalOptions:
    data_dir: Path
    out_dir: Path
    configs: tuple[PipelineSpec, ...]
    baseline: str | None = None  # default: the first configuration
    split: str = "test"
    concurrency: int = 8
    limit: int | None = None
    relevance_threshold: int = 1
    timeout_s: float = 600.0
    repeat_zipf: float | None = None
    ignore_identical_ids: bool = True  # BEIR's rule: a query's own id is never a result


def parse_configs(text: str) -> tuple[PipelineSpec, ...]:
    """Comma-separated pipelines (see rankstream.wire.pipeline); raises InvalidRequestError for
    one that does not parse, UsageError for a configuration named twice."""
    specs = tuple(PipelineSpec.parse(part) for part in text.split(",") if part.strip())
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"--configs names a configuration twice: {names}")
    return specs


async def run_eval(settings: Settings, options: EvalOptions, console: Console) -> Path:
    """Index (or reuse), run every configuration, write the report; returns the report path."""
    queries = read_queries(options.data_dir)
    qrels = read_qrels(options.data_dir, options.split)
    query_ids = [qid for qid in queries if qid in qrels][: options.limit]
    if not query_ids:
        raise UsageError(f"no query of {options.data_dir} has {options.split} judgments")
    baseline = options.baseline or options.configs[0].name
    if baseline not in {spec.name for spec in options.configs}:
        raise UsageError(f"--baseline {baseline!r} is not one of --configs")
    settings = await asyncio.to_thread(ensure_indexed, settings, options.data_dir, console)
    scorers = sorted({stage.scorer for spec in options.configs for stage in spec.stages} - {"ce"})
    settings = settings.model_copy(
        update={
            "subject_prefix": f"eval{uuid.uuid4().hex[:8]}",
            "preload_scorers": scorers,
            "metrics_port": 0,
            # A replay measures the cache: it must be on, whatever the settings say.
            "cache_ttl_s": settings.cache_ttl_s or (600.0 if options.repeat_zipf else 0.0),
        }
    )
    runs: list[ConfigRun] = []
    replays: list[ReplayRun] = []
    async with local_nats(settings, port=None) as settings:
        with console.status("starting the workers (models load and warm up)"):
            workers = [WorkerProcess("retrieval", settings), WorkerProcess("rerank", settings)]
            for worker in workers:
                worker.start()
        try:
            async with RankstreamClient(settings) as client:
                trial = _Trial(client, workers, queries, options, console)
                for spec in options.configs:
                    runs.append(await trial.measure(spec, query_ids))
                if options.repeat_zipf is not None:
                    for spec in options.configs:
                        await _empty_cache(settings)
                        replays.append(await trial.replay(spec, query_ids, options.repeat_zipf))
        finally:
            for worker in workers:
                worker.stop()
    summaries = summarize(runs, qrels, options.relevance_threshold, baseline)
    about = _about(settings, options, len(query_ids), baseline)
    write_outputs(options.out_dir, runs, summaries, replays, about)
    return options.out_dir / "report.md"


class _Trial:
    """Sends one configuration's queries through the client, `concurrency` at a time."""

    def __init__(
        self,
        client: RankstreamClient,
        workers: Sequence[WorkerProcess],
        queries: dict[str, str],
        options: EvalOptions,
        console: Console,
    ) -> None:
        self._client, self._workers, self._queries = client, workers, queries
        self._options, self._console = options, console

    async def measure(self, spec: PipelineSpec, query_ids: list[str]) -> ConfigRun:
        warm_up = query_ids[:WARM_UP_QUERIES]
        await asyncio.gather(*(self._ask(spec, qid, cache=False) for qid in warm_up))
        cpu_before = sum(worker.cpu_seconds() for worker in self._workers)
        started = time.perf_counter()
        outcomes = await self._all(spec, query_ids, cache=False, label=spec.name)
        wall_s = time.perf_counter() - started
        cpu_s = sum(worker.cpu_seconds() for worker in self._workers) - cpu_before
        failed = sum(o.error is not None for o in outcomes)
        if failed:
            self._console.print(f"[yellow]{spec.name}: {failed} queries failed[/yellow]")
        return ConfigRun(spec.name, outcomes, wall_s, cpu_s)

    async def replay(self, spec: PipelineSpec, query_ids: list[str], exponent: float) -> ReplayRun:
        """As many requests as the split has queries, drawn with P(rank r) ~ 1 / r^exponent
        over a fixed shuffle of the queries, with the cache on."""
        shuffled = random.Random(0).sample(query_ids, len(query_ids))
        weights = [1.0 / rank**exponent for rank in range(1, len(shuffled) + 1)]
        draws = random.Random(1).choices(shuffled, weights=weights, k=len(query_ids))
        outcomes = await self._all(spec, draws, cache=True, label=f"{spec.name} (Zipf replay)")
        return ReplayRun(spec.name, exponent, outcomes)

    async def _all(
        self, spec: PipelineSpec, query_ids: list[str], cache: bool, label: str
    ) -> list[QueryOutcome]:
        in_flight = asyncio.Semaphore(self._options.concurrency)

        async def one(query_id: str) -> QueryOutcome:
            async with in_flight:
                outcome = await self._ask(spec, query_id, cache)
                progress.advance(task)
                return outcome

        with Progress(console=self._console) as progress:
            task = progress.add_task(f"{label:>28}", total=len(query_ids))
            return list(await asyncio.gather(*(one(q) for q in query_ids)))

    async def _ask(self, spec: PipelineSpec, query_id: str, cache: bool) -> QueryOutcome:
        request = self._request(spec, self._queries[query_id], cache)
        started = time.perf_counter()
        try:
            reply = await self._client.send(request)
        except RankstreamError as error:
            return QueryOutcome(query_id, [], 0.0, error=str(error))
        latency_ms = (time.perf_counter() - started) * 1000
        if isinstance(reply, ErrorResult):
            return QueryOutcome(query_id, [], latency_ms, error=f"{reply.code}: {reply.message}")
        ignore = query_id if self._options.ignore_identical_ids else None
        return QueryOutcome(
            query_id,
            [doc.doc_id for doc in reply.results if doc.doc_id != ignore],
            latency_ms,
            timings=reply.timings_ms,
            pairs=0 if reply.cached else sum(stage.pairs for stage in reply.stages),
            cached=reply.cached,
        )

    def _request(self, spec: PipelineSpec, text: str, cache: bool) -> QueryRequest:
        return self._client.request(
            text, top_k=RESULTS_PER_QUERY, timeout_s=self._options.timeout_s, pipeline=spec,
            cache=cache, return_documents=False,  # ids are all it scores
        )  # fmt: skip


async def _empty_cache(settings: Settings) -> None:
    """Purge the result cache's bucket, so a replay's hits are its own."""
    connection = await nats.connect(**connect_kwargs(settings))
    try:
        bucket = Subjects.from_settings(settings).cache_bucket
        await connection.jetstream().purge_stream(f"KV_{bucket}")
    finally:
        await connection.close()


def _about(
    settings: Settings, options: EvalOptions, query_count: int, baseline: str
) -> dict[str, object]:
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
        "baseline": baseline,
        "configs": [spec.name for spec in options.configs],
        "ignore_identical_ids": options.ignore_identical_ids,
    }
