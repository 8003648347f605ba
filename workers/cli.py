"""The `rankstream` command: up, gateway, demo, index, query, worker, asyncapi."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from rankstream.config import NATS_SYNC_INTERVAL_PATTERN, Settings
from rankstream.errors import RankstreamError

# Packaged models load from site-packages; never wait on an unreachable model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    help="Two-stage search over NATS: retrieve, rerank, measure.", no_args_is_help=True
)
console = Console()
log = logging.getLogger("rankstream")


@app.callback()
def main(
    ctx: typer.Context,
    nats_url: Annotated[str | None, typer.Option(help="NATS URL; unset = embedded local")] = None,
    subject_prefix: Annotated[str | None, typer.Option(help="Prefix of every subject")] = None,
    embedder_model: Annotated[str | None, typer.Option(help="packaged:NAME, HF id or path")] = None,
    reranker_model: Annotated[str | None, typer.Option(help="packaged:NAME, HF id or path")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, float16, bfloat16 (torch)")] = None,
    lancedb_uri: Annotated[str | None, typer.Option(help="LanceDB directory or URI")] = None,
    table: Annotated[str | None, typer.Option(help="LanceDB table name")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port of /metrics; 0 = off")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Options here override RANKSTREAM_* environment variables."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    overrides: dict[str, Any] = {
        "nats_url": nats_url,
        "subject_prefix": subject_prefix,
        "embedder_model": embedder_model,
        "reranker_model": reranker_model,
        "device": device,
        "dtype": dtype,
        "lancedb_uri": lancedb_uri,
        "table": table,
        "metrics_port": metrics_port,
    }
    ctx.obj = Settings(**{k: v for k, v in overrides.items() if v is not None})


def _require_extra(extra: str, *modules: str) -> None:
    """Exit with the install command when an optional extra is missing (a serving image
    installs `rankstream` without `rankstream[eval]`)."""
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        console.print(
            f"[red]error:[/red] this command needs {', '.join(missing)}: "
            f"pip install 'rankstream[{extra}]'"
        )
        raise typer.Exit(1)


def _run(coroutine: Any) -> Any:
    """Run a coroutine; a RankstreamError becomes a one-line message and exit code 1."""
    try:
        return asyncio.run(coroutine)
    except RankstreamError as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True)  # one line, as raised
        raise typer.Exit(1) from error


PROFILE_HELP = (
    "A profile written by `rankstream tune`: its plan answers requests that name no pipeline "
    "(default: RANKSTREAM_PROFILE)"
)


def _with_profile(settings: Settings, profile: Path | None) -> Settings:
    """`settings` serving `profile`, or the profile they already name (RANKSTREAM_PROFILE)."""
    if profile is None:
        return settings
    return settings.model_copy(update={"profile": profile})


@app.command()
def up(
    ctx: typer.Context,
    cluster: Annotated[
        int, typer.Option(min=0, help="Start N clustered nats-server nodes (N > 1) instead of one")
    ] = 0,
    profile: Annotated[Path | None, typer.Option(help=PROFILE_HELP)] = None,
) -> None:
    """Run NATS (embedded when no URL is set), both workers and the HTTP gateway (on
    RANKSTREAM_GATEWAY_PORT, default 8080; 0 turns it off) until Ctrl-C."""
    from rankstream.workers.stack import serve_local_stack

    _run(serve_local_stack(_with_profile(ctx.obj, profile), cluster=cluster))


@app.command()
def gateway(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port (default RANKSTREAM_GATEWAY_PORT)")] = None,
) -> None:
    """Serve the HTTP gateway (Cohere /v2/rerank, Jina/vLLM /v1/rerank, TEI /rerank,
    /v1/search; docs at /docs) against the configured NATS until Ctrl-C."""
    from rankstream.workers.gateway.app import serve_gateway

    settings: Settings = ctx.obj
    if port is not None:
        settings = settings.model_copy(update={"gateway_port": port})
    _run(serve_gateway(settings))


@app.command()
def worker(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="retrieval or rerank")],
) -> None:
    """Run one worker against the configured NATS: one process per replica."""
    from rankstream.workers.app import WorkerKind, serve_workers

    try:
        chosen = WorkerKind(kind)
    except ValueError as error:
        raise typer.BadParameter("KIND must be retrieval or rerank") from error
    _run(serve_workers(ctx.obj, [chosen]))


@app.command()
def demo(ctx: typer.Context) -> None:
    """Start everything, index the sample corpus, compare bi-encoder and reranked orders."""
    from rankstream.workers.tools.demo import run_demo

    _run(run_demo(ctx.obj, console))


@app.command()
def index(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="BEIR folder (corpus.jsonl) or a JSONL file")],
) -> None:
    """Embed documents and upsert them (by id) into the LanceDB table."""
    from rankstream.workers.tools.indexing import index_corpus

    settings: Settings = ctx.obj
    try:
        written = index_corpus(settings, path, console)
    except RankstreamError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    console.print(f"{written} documents in {settings.lancedb_uri} table {settings.table!r}")


@app.command()
def query(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The query")],
    top_k: Annotated[int | None, typer.Option(help="Results to return")] = None,
    depth: Annotated[int | None, typer.Option(help="Candidates to rerank; 0 = none")] = None,
    pipeline: Annotated[
        str | None, typer.Option(help="Retrieval and cascade, e.g. hybrid+ce@100/doc64>ce@20")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranked result as JSON")] = (
        False
    ),
) -> None:
    """Send one query through the running pipeline and print its ranked result."""
    from rankstream.client import RankstreamClient

    async def ask() -> Any:
        async with RankstreamClient(ctx.obj) as client:
            return await client.query(
                text, top_k=top_k, depth=depth, timeout_s=timeout, pipeline=pipeline
            )

    result = _run(ask())
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    for position, doc in enumerate(result.results, start=1):
        console.print(
            f"{position:>2}. {doc.score:+7.3f} {doc.doc_id} (retrieval #{doc.retrieval_rank})"
        )
        console.print(f"    [dim]{doc.text[:160]}[/dim]")
    console.print(f"[dim]ms: {result.timings_ms.model_dump()}[/dim]")
    for stage in result.stages:
        console.print(
            f"[dim]stage {stage.name}: {stage.pairs} pairs, {stage.inference_ms:.0f} ms[/dim]"
        )


CONFIGS_HELP = (
    "Pipelines, comma-separated: MODE[+STAGE{>STAGE}] with MODE dense|bm25|hybrid|hybrid~W and "
    "STAGE SCORER@DEPTH\\[/docN|/maxpN|/bestN]\\[~W], SCORER ce|ce-int8|ce-fp32|student|maxsim, "
    "DEPTH a number or auto; `profile`: requests that name no pipeline, answered with the "
    "profile's plan (needs --profile or RANKSTREAM_PROFILE); e.g. dense,bm25,hybrid,hybrid~0.6,"
    "hybrid+ce@10,dense+ce@20/doc256,hybrid+ce@30/best128~0.5,hybrid+ce@100/doc64>ce@20,profile"
)


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    data_dir: Annotated[
        Path, typer.Argument(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    ],
    configs: Annotated[str, typer.Option(help=CONFIGS_HELP)] = "",
    baseline: Annotated[
        str | None, typer.Option(help="The configuration p-values compare to (default: first)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the report")] = Path("eval-out"),
    split: Annotated[str, typer.Option(help="qrels/<split>.tsv")] = "test",
    concurrency: Annotated[int, typer.Option(min=1, help="Queries in flight")] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N queries")] = None,
    relevance_threshold: Annotated[
        int, typer.Option(help="Grade counted relevant by binary metrics (TREC DL: 2)")
    ] = 1,
    repeat_zipf: Annotated[
        float | None,
        typer.Option(help="Then replay each configuration with a Zipf(S) repeat of the queries, "
                     "cache on, and report the cache's hit ratio and latency"),
    ] = None,
    keep_identical_ids: Annotated[
        bool, typer.Option(help="Count a result whose id is the query's (BEIR drops it)")
    ] = False,
    profile: Annotated[
        Path | None,
        typer.Option(help="The workers serve this profile (`rankstream tune`) to the `profile` "
                     "configuration, which is then one of the defaults (default: "
                     "RANKSTREAM_PROFILE)"),
    ] = None,
) -> None:  # fmt: skip
    """Is reranking worth its cost? Quality, latency, pairs and CPU per configuration."""
    _require_extra("eval", "ir_measures", "scipy", "matplotlib")
    from rankstream.planning.profile import load_profile
    from rankstream.workers.tools.errors import UsageError
    from rankstream.workers.tools.evaluate import (
        DEFAULT_CONFIGS,
        PROFILE_CONFIG,
        EvalOptions,
        parse_configs,
        run_eval,
    )

    settings: Settings = _with_profile(ctx.obj, profile)
    try:
        served = load_profile(settings.profile) if settings.profile is not None else None
    except RankstreamError as error:
        raise typer.BadParameter(str(error), param_hint="--profile") from error
    if not configs:
        configs = DEFAULT_CONFIGS + (f",{PROFILE_CONFIG}" if served is not None else "")
    try:
        chosen = parse_configs(configs, served)
    except (RankstreamError, UsageError) as error:
        raise typer.BadParameter(str(error), param_hint="--configs") from error
    options = EvalOptions(
        data_dir=data_dir,
        out_dir=out,
        configs=chosen,
        baseline=baseline,
        split=split,
        concurrency=concurrency,
        limit=limit,
        relevance_threshold=relevance_threshold,
        repeat_zipf=repeat_zipf,
        ignore_identical_ids=not keep_identical_ids,
        profile=settings.profile,
    )
    try:
        report = _run(run_eval(settings, options, console))
    except UsageError as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True)
        raise typer.Exit(1) from error
    console.print(report.read_text(encoding="utf-8"))
    console.print(
        f"[bold]written to {out}[/bold]: metrics.json, about.json, report.md, tradeoff.png, runs/"
    )


@app.command("calibrate-depth")
def calibrate_depth(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="BEIR folder with a train split")],
    out: Annotated[Path, typer.Option(help="Where the policy JSON is written")] = Path(
        "auto_depth.json"
    ),
    mode: Annotated[str, typer.Option(help="Retrieval mode: dense, bm25, hybrid")] = "hybrid",
    scorer: Annotated[str, typer.Option(help="The stage's scorer")] = "ce",
    split: Annotated[str, typer.Option(help="qrels/<split>.tsv (never the reported one)")] = (
        "train"
    ),
    grid: Annotated[str, typer.Option(help="Depths to choose from")] = "0,5,10,15,20,30",
    tolerance: Annotated[float, typer.Option(help="nDCG@10 each quartile may lose")] = 0.005,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N queries")] = None,
) -> None:
    """Fit the depth `auto` policy on a train split; use it with RANKSTREAM_AUTO_DEPTH_POLICY."""
    _require_extra("eval", "ir_measures", "scipy")
    from rankstream.workers.tools.calibrate import CalibrationOptions, calibrate

    try:
        depths = tuple(int(d) for d in grid.split(",") if d.strip())
    except ValueError as error:
        raise typer.BadParameter("--grid takes integers like 0,5,10,20") from error
    options = CalibrationOptions(data_dir, out, mode, scorer, split, depths, tolerance, limit)
    policy = _run(calibrate(ctx.obj, options, console))
    console.print(policy.to_json())
    console.print(f"[bold]written to {out}[/bold]: RANKSTREAM_AUTO_DEPTH_POLICY={out}")


@app.command()
def tune(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="BEIR folder (a train split, or k-fold)")],
    out: Annotated[Path, typer.Option(help="Folder for profile.json and the report")] = Path(
        "profile"
    ),
    max_cpu_ms: Annotated[
        float | None, typer.Option(min=0, help="Most CPU ms a query may cost (estimated)")
    ] = None,
    max_p95_ms: Annotated[
        float | None, typer.Option(min=0, help="Most p95 ms a query may take, one at a time")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Tune on the first N queries")] = None,
    test_limit: Annotated[
        int | None, typer.Option(min=1, help="With a train split: report on N test queries")
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="Folds where there is no train split")] = 5,
    relevance_threshold: Annotated[
        int, typer.Option(min=1, help="Grade counted relevant by binary metrics")
    ] = 1,
    depths: Annotated[str, typer.Option(help="Rerank depths to try")] = "10,20,30",
    budgets: Annotated[
        str, typer.Option(help="Token budgets to try: /docN, /bestN, /maxpN, full")
    ] = "/best128,/doc128,/doc256",
    scorer: Annotated[str, typer.Option(help="The cross-encoder scorer to tune")] = "ce",
) -> None:
    """Find the plan where reranking pays off on this collection, under a cost bound; write
    it as a profile (serve it with RANKSTREAM_PROFILE or `rankstream up --profile`)."""
    _require_extra("eval", "ir_measures", "scipy")
    from rankstream.workers.tools.errors import UsageError
    from rankstream.workers.tools.tune import TuneOptions, run_tune

    try:
        depth_grid = tuple(sorted({int(d) for d in depths.split(",") if d.strip()}))
    except ValueError as error:
        raise typer.BadParameter("--depths takes integers like 10,20,30") from error
    if not depth_grid or min(depth_grid) < 1:
        raise typer.BadParameter("--depths needs depths of at least 1")
    options = TuneOptions(
        data_dir, out, max_cpu_ms, max_p95_ms, limit, test_limit, folds, relevance_threshold,
        depth_grid, tuple(b.strip() for b in budgets.split(",") if b.strip()), scorer,
    )  # fmt: skip
    try:
        report = run_tune(ctx.obj, options, console)
    except (RankstreamError, UsageError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    console.print(report.read_text(encoding="utf-8"))
    console.print(f"[bold]profile: {out / 'profile.json'}[/bold] (RANKSTREAM_PROFILE)")


@app.command()
def distill(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="BEIR folder with the split to learn from")],
    out: Annotated[Path, typer.Option(help="The student's folder (onnx-int8/ inside)")],
    split: Annotated[str, typer.Option(help="qrels/<split>.tsv (never the reported one)")] = (
        "train"
    ),
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N queries")] = None,
    depth: Annotated[int, typer.Option(min=1, help="Candidates per query")] = 20,
    mode: Annotated[str, typer.Option(help="Retrieval mode: dense, bm25, hybrid")] = "hybrid",
    init: Annotated[
        str, typer.Option(help="Start from: teacher (its own checkpoint), an HF id or a path")
    ] = "teacher",
    layers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Layers kept: 0 = every other one, N = the first N; the starting point's own "
            "count (12 for the packaged teacher) keeps all: fine-tunes the teacher itself",
        ),
    ] = 0,
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    learning_rate: Annotated[float, typer.Option()] = 5e-5,
    max_length: Annotated[int, typer.Option(min=16, help="Tokens per training pair")] = 256,
    student: Annotated[
        str, typer.Option(help="cross-encoder (student@K) or late-interaction (maxsim@K)")
    ] = "cross-encoder",
    loss: Annotated[
        str,
        typer.Option(
            help="A cross-encoder's loss: mse (each logit) or margin-mse (each list); with "
            "--labels, the teacher term"
        ),
    ] = "mse",
    labels: Annotated[
        bool,
        typer.Option(
            help="Also learn from the split's judgements (qrels): each query's judged "
            "positives (added where retrieval missed them) against its retrieved candidates "
            "not judged relevant; a cross-encoder student only"
        ),
    ] = False,
    label_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="With --labels: weight of the label term (each positive's softmax "
            "cross-entropy against the list's negatives) beside the teacher term; 0 = the "
            "teacher alone",
        ),
    ] = 1.0,
) -> None:
    """Distil the configured cross-encoder into a smaller student on your own pairs (with
    --labels, adapted to the split's judgements too); serve it with RANKSTREAM_STUDENT_MODEL
    (stage `student@K`)."""
    from rankstream.workers.tools.distill import DistillOptions, run_distill

    options = DistillOptions(
        data_dir, out, split, limit, depth, mode, init, layers, epochs, batch_size,
        learning_rate, max_length, student=student, loss=loss, labels=labels,
        label_weight=label_weight,
    )  # fmt: skip
    report = run_distill(ctx.obj, options, console)
    if labels:
        console.print(
            f"{report.positives} judged positives in the lists ({report.positives_added} "
            "that retrieval missed)"
        )
    console.print(
        f"{report.pairs} pairs of {report.queries} queries ({report.pairs_scored_now} newly "
        f"scored by the teacher, {report.teacher_s:.0f} s); student keeps layers "
        f"{report.layers_kept}, trained in {report.train_s:.0f} s, exported in "
        f"{report.export_s:.0f} s; peak RSS {report.peak_rss_mb:.0f} MB"
    )
    if report.onnx_dir is None:
        console.print(f"[bold]RANKSTREAM_LATE_INTERACTION_MODEL={report.student_dir}[/bold]")
    else:
        console.print(
            f"[bold]RANKSTREAM_STUDENT_MODEL={report.onnx_dir}[/bold] (CPU, int8) or "
            f"{report.student_dir} (torch)"
        )


@app.command()
def bench(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option(help="BEIR folder; default: the sample corpus")
    ] = None,
    depth: Annotated[int, typer.Option(min=1, help="Pairs reranked per query")] = 5,
    concurrency: Annotated[int, typer.Option(min=1, help="Closed-loop clients")] = 32,
    rate: Annotated[float | None, typer.Option(help="Also run open loop at this queries/s")] = None,
    duration: Annotated[float, typer.Option(help="Seconds of each load phase")] = 30.0,
    priority_duration: Annotated[
        float | None,
        typer.Option(
            help="Seconds of batch-lane load in the priority phase (default: half of "
            "--duration, at least 5); 0 skips it"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False,
) -> None:
    """Throughput and latency through the real pipeline, beside the model's limit and the
    no-cross-request-batching figure, on the same model and inputs; and each priority lane's
    p50, unloaded and under batch-lane load (`priority_p50_ms`)."""
    from rankstream.workers.tools.bench import BenchOptions, run_bench

    if priority_duration is None:
        priority_duration = max(5.0, duration / 2)
    options = BenchOptions(
        data_dir=data, depth=depth, concurrency=concurrency, rate=rate, duration_s=duration,
        # At 25% load few queries arrive: run longer for a stable p50 (~40 queries on CPU).
        low_load_duration_s=max(10.0, duration * 1.5), priority_duration_s=priority_duration,
    )  # fmt: skip
    say = Console(stderr=True)
    report = _run(run_bench(ctx.obj, options, lambda line: say.print(f"[dim]{line}[/dim]")))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_bench(report)


def _print_bench(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"rankstream bench: {report['model']}, depth {report['depth']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("model alone, tight loop (pairs/s)", f"{report['limit_pairs_per_s']:.1f}"),
        ("pipeline at saturation (pairs/s)", f"{report['pipeline_pairs_per_s']:.1f}"),
        ("one call per request (pairs/s)", f"{report['unbatched_pairs_per_s']:.1f}"),
        ("pipeline / limit", f"{report['pipeline_vs_limit']:.2f}"),
        ("pipeline / unbatched", f"{report['pipeline_vs_unbatched']:.2f}"),
        ("queries/s", f"{report['queries_per_s']:.2f}"),
        ("latency p50 / p95 / p99 (ms)", _percentiles(report["latency_ms"])),
        ("model time per request p50 (ms)", f"{report['model_ms_p50']:.0f}"),
        ("pairs per batch", f"{report['batch']['pairs_per_batch']:.1f}"),
        ("padding ratio", f"{report['padding_ratio']:.3f}"),
        ("rerank worker peak RSS (MB)", f"{report['rerank_worker_rss_mb']:.0f}"),
        (
            "25% load: p50 latency - model time (ms)",
            f"{report['low_load']['latency_minus_model_ms_p50']:.1f}",
        ),
    ]
    rows.append(("one bare JetStream hop p50 (ms)", f"{report['jetstream_hop_ms']['p50']:.1f}"))
    for lane, p50 in report.get("priority_p50_ms", {}).items():
        rows.append((f"{lane} lane p50 unloaded / loaded (ms)", _pair(p50)))
    for size, pairs_per_s in report["model_pairs_per_s_by_batch_size"].items():
        rows.append((f"model alone, batches of {size} (pairs/s)", f"{pairs_per_s:.1f}"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@app.command("bench-sync")
def bench_sync(
    ctx: typer.Context,
    sync_intervals: Annotated[
        str,
        typer.Option(
            help="JetStream sync_interval values, comma-separated: always, default (the "
            "server's, 2 min) or a duration like 10s"
        ),
    ] = "always,default",
    depths: Annotated[str, typer.Option(help="Rerank depths, comma-separated; 0: none")] = "0,10",
    concurrency: Annotated[int, typer.Option(min=1, help="Closed-loop clients")] = 32,
    duration: Annotated[float, typer.Option(help="Seconds of each load phase")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list on stdout")] = False,
) -> None:
    """What `sync_interval: always` costs: p50/p99 latency and queries/s of the same
    closed-loop load at each depth, against an embedded server with each sync_interval."""
    from rich.table import Table

    from rankstream.workers.tools.bench import BenchOptions, run_sync_bench

    intervals = [value.strip() for value in sync_intervals.split(",") if value.strip()]
    for interval in intervals:
        if not re.fullmatch(NATS_SYNC_INTERVAL_PATTERN, interval):
            raise typer.BadParameter(f"{interval!r}: always, default or a duration like 10s")
    try:
        parsed = [int(depth) for depth in depths.split(",") if depth.strip()]
    except ValueError as error:
        raise typer.BadParameter("--depths takes integers like 0,10") from error
    options = BenchOptions(concurrency=concurrency, duration_s=duration)
    say = Console(stderr=True)
    rows = _run(
        run_sync_bench(
            ctx.obj, intervals, parsed, options, lambda line: say.print(f"[dim]{line}[/dim]")
        )
    )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"rankstream bench-sync: {concurrency} closed-loop clients")
    for column in ("sync_interval", "depth", "p50 (ms)", "p99 (ms)", "queries/s", "errors"):
        table.add_column(column, justify="right")
    for row in rows:
        latency = row["latency_ms"]
        table.add_row(
            row["sync_interval"], str(row["depth"]), f"{latency['p50']:.1f}",
            f"{latency['p99']:.1f}", f"{row['queries_per_s']:.1f}", str(row["errors"]),
        )  # fmt: skip
    console.print(table)


@app.command("bench-store")
def bench_store(
    sizes: Annotated[
        str, typer.Option(help="Corpus sizes, comma-separated")
    ] = "10000,100000,1000000",
    queries: Annotated[int, typer.Option(min=1, help="Queries per size")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list on stdout")] = False,
) -> None:
    """LanceDB search over synthetic 384-d corpora: index build time, p50/p99 latency and
    recall@100 of the ANN index against exact search."""
    import dataclasses

    from rankstream.workers.tools.bench_store import render_table, run_store_bench

    try:
        parsed = [int(size) for size in sizes.split(",") if size.strip()]
    except ValueError as error:
        raise typer.BadParameter("--sizes takes integers like 10000,100000") from error
    say = Console(stderr=True)
    rows = run_store_bench(
        parsed, queries=queries, on_row=lambda row: say.print(f"[dim]{row}[/dim]")
    )
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2, default=str))
        return
    console.print(render_table(rows))


def _pair(p50: dict[str, float]) -> str:
    return f"{p50['unloaded']:.0f} / {p50['loaded']:.0f}"


def _percentiles(values: dict[str, float]) -> str:
    return " / ".join(f"{values[p]:.0f}" for p in ("p50", "p95", "p99"))


@app.command()
def asyncapi(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Write the spec here (else stdout)")] = None,
) -> None:
    """Print the AsyncAPI spec of both workers' subjects and messages."""
    from rankstream.workers.spec import asyncapi_spec

    document = json.dumps(asyncapi_spec(ctx.obj), indent=2)
    if out is None:
        typer.echo(document)
    else:
        out.write_text(document + "\n", encoding="utf-8")
