"""`rankstream eval`: every query of a BEIR split through the running pipeline (NATS, both
workers as processes, the micro-batcher), once per pipeline configuration, scored, timed and
costed; optionally replayed with a Zipf-distributed repeat of the queries to measure the
result cache.

A configuration is a pipeline (rankstream.wire.pipeline) the requests name, or `profile`:
requests that name none, so the workers, started with the profile, serve its plan
(rankstream.planning.profile) as they would in production.
"""

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

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import RankstreamError
from rankstream.planning.profile import Profile, load_profile
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
from rankstream.workers.tools.progress import progress

RESULTS_PER_QUERY = 100  # Recall@100 needs a hundred results
WARM_UP_QUERIES = 4
DEFAULT_CONFIGS = "dense,bm25,hybrid,dense+ce@10,hybrid+ce@10,hybrid+ce@20"
# The configuration whose requests name no pipeline: the workers serve their profile's plan.
PROFILE_CONFIG = "profile"


@dataclass(frozen=True)
class EvalConfig:
    """One configuration: `spec` is the plan it runs; with `profile`, the requests name no
    pipeline and the workers, serving that profile, choose `spec` themselves."""

    spec: PipelineSpec
    profile: Profile | None = None

    @property
    def name(self) -> str:
        return PROFILE_CONFIG if self.profile is not None else self.spec.name

    @property
    def asked(self) -> PipelineSpec | None:
        """The pipeline the requests name (None: the workers' own)."""
        return None if self.profile is not None else self.spec


@dataclass(frozen=True)
class EvalOptions:
    data_dir: Path
    out_dir: Path
    configs: tuple[EvalConfig, ...]
    baseline: str | None = None  # default: the first configuration
    split: str = "test"
    concurrency: int = 8
    limit: int | None = None
    relevance_threshold: int = 1
    timeout_s: float = 600.0
    repeat_zipf: float | None = None
    ignore_identical_ids: bool = True  # BEIR's rule: a query's own id is never a result
    # The workers serve it (`profile` needs one); None: the settings' own (RANKSTREAM_PROFILE).
    profile: Path | None = None


def parse_configs(text: str, profile: Profile | None = None) -> tuple[EvalConfig, ...]:
    """Comma-separated pipelines (see rankstream.wire.pipeline) and `profile`, which runs
    `profile`'s plan as the workers serve it.

    Raises:
        InvalidRequestError: a pipeline does not parse.
        UsageError: a configuration is named twice, or `profile` is named without a profile.
    """
    configs = tuple(_config(part.strip(), profile) for part in text.split(",") if part.strip())
    names = [config.name for config in configs]
    if len(set(names)) != len(names):
        raise UsageError(f"--configs names a configuration twice: {names}")
    return configs


def _config(text: str, profile: Profile | None) -> EvalConfig:
    if text != PROFILE_CONFIG:
        return EvalConfig(PipelineSpec.parse(text))
    if profile is None:
        raise UsageError(
            f"--configs {PROFILE_CONFIG} runs the plan of a profile (`rankstream tune`): give "
            "one with --profile FILE or RANKSTREAM_PROFILE"
        )
    return EvalConfig(profile.spec, profile)


async def run_eval(settings: Settings, options: EvalOptions, console: Console) -> Path:
    """Index (or reuse), run every configuration, write the report; returns the report path."""
    queries = read_queries(options.data_dir)
    qrels = read_qrels(options.data_dir, options.split)
    query_ids = [qid for qid in queries if qid in qrels][: options.limit]
    if not query_ids:
        raise UsageError(f"no query of {options.data_dir} has {options.split} judgments")
    baseline = options.baseline or options.configs[0].name
    if baseline not in {config.name for config in options.configs}:
        raise UsageError(f"--baseline {baseline!r} is not one of --configs")
    served = options.profile or settings.profile
    profile = load_profile(served) if served is not None else None  # refused before any work
    if any(config.profile not in (None, profile) for config in options.configs):
        raise UsageError(f"`{PROFILE_CONFIG}` was read from another profile than {served}")
    settings = await asyncio.to_thread(ensure_indexed, settings, options.data_dir, console)
    scorers = sorted(
        {stage.scorer for config in options.configs for stage in config.spec.stages} - {"ce"}
    )
    settings = settings.model_copy(
        update={
            "profile": served,
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
                for config in options.configs:
                    runs.append(await trial.measure(config, query_ids))
                if options.repeat_zipf is not None:
                    for config in options.configs:
                        await _empty_cache(settings)
                        replays.append(await trial.replay(config, query_ids, options.repeat_zipf))
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

    async def measure(self, config: EvalConfig, query_ids: list[str]) -> ConfigRun:
        warm_up = query_ids[:WARM_UP_QUERIES]
        await asyncio.gather(*(self._ask(config, qid, cache=False) for qid in warm_up))
        cpu_before = sum(worker.cpu_seconds() for worker in self._workers)
        started = time.perf_counter()
        outcomes = await self._all(config, query_ids, cache=False, label=config.name)
        wall_s = time.perf_counter() - started
        cpu_s = sum(worker.cpu_seconds() for worker in self._workers) - cpu_before
        failed = sum(o.error is not None for o in outcomes)
        if failed:
            self._console.print(f"[yellow]{config.name}: {failed} queries failed[/yellow]")
        return ConfigRun(config.name, outcomes, wall_s, cpu_s, pipeline=config.spec.name)

    async def replay(self, config: EvalConfig, query_ids: list[str], exponent: float) -> ReplayRun:
        """As many requests as the split has queries, drawn with P(rank r) ~ 1 / r^exponent
        over a fixed shuffle of the queries, with the cache on."""
        shuffled = random.Random(0).sample(query_ids, len(query_ids))
        weights = [1.0 / rank**exponent for rank in range(1, len(shuffled) + 1)]
        draws = random.Random(1).choices(shuffled, weights=weights, k=len(query_ids))
        outcomes = await self._all(config, draws, cache=True, label=f"{config.name} (Zipf replay)")
        return ReplayRun(config.name, exponent, outcomes)

    async def _all(
        self, config: EvalConfig, query_ids: list[str], cache: bool, label: str
    ) -> list[QueryOutcome]:
        in_flight = asyncio.Semaphore(self._options.concurrency)

        async def one(query_id: str) -> QueryOutcome:
            async with in_flight:
                outcome = await self._ask(config, query_id, cache)
                advance(1)
                return outcome

        with progress(self._console, f"{label:>28}", len(query_ids)) as advance:
            return list(await asyncio.gather(*(one(q) for q in query_ids)))

    async def _ask(self, config: EvalConfig, query_id: str, cache: bool) -> QueryOutcome:
        text = self._queries[query_id]
        request = eval_request(self._client, config, text, cache, self._options.timeout_s)
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


def eval_request(
    client: RankstreamClient, config: EvalConfig, text: str, cache: bool, timeout_s: float
) -> QueryRequest:
    """`config`'s request for `text`: its pipeline, or (`profile`) none, so that the workers
    plan it with their profile."""
    return client.request(
        text, top_k=RESULTS_PER_QUERY, timeout_s=timeout_s, pipeline=config.asked, cache=cache,
        return_documents=False,  # ids are all it scores
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
        "configs": [config.name for config in options.configs],
        "pipelines": {config.name: config.spec.name for config in options.configs},
        "profile": _about_profile(settings, options.configs),
        "ignore_identical_ids": options.ignore_identical_ids,
    }


def _about_profile(settings: Settings, configs: Sequence[EvalConfig]) -> dict[str, object] | None:
    """The profile the `profile` configuration ran: its file, pipeline, digest and how it
    was fitted."""
    profile = next((config.profile for config in configs if config.profile), None)
    if profile is None:
        return None
    return {
        "file": str(settings.profile),
        "pipeline": profile.pipeline,
        "digest": profile.digest,
        "about": profile.about,
    }
