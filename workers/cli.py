"""The `rankstream` command: up, gateway, demo, index, query, worker, asyncapi.

Help is click's plain text (`rich_markup_mode=None`): it wraps at the terminal's width and
never cuts a word such as the pipeline grammar short, in a terminal or a file. Each command's
summary in `rankstream --help` is the first paragraph of its docstring, one sentence
(`_summaries`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import logging
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from rankstream.config import NATS_SYNC_INTERVAL_PATTERN, Settings
from rankstream.errors import RankstreamError
from rankstream.workers.logs import setup_logging
from rankstream.workers.ports import Listener, first_unavailable

if TYPE_CHECKING:
    from rankstream.wire.contract import RankedResult

# Packaged models load from site-packages; never wait on an unreachable model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No progress bars of model loading (transformers' "Loading weights"): a log line says it.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    help="Two-stage search over NATS: retrieve, rerank, measure.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
# Lines are never cut to the terminal's width by rich: the terminal wraps them, and in a
# file or a pipe a line stays one line (rich's width there is 80 columns).
console = Console(soft_wrap=True)
log = logging.getLogger("rankstream")


def _print_version(value: bool) -> None:
    if value:
        from rankstream import __version__

        typer.echo(f"rankstream {__version__}")
        raise typer.Exit()


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
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Port of /metrics, /livez and /readyz (up, worker); 0 = off"),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v",
            help="Log DEBUG lines, every library's INFO lines and whole tracebacks",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True,
            help="Print rankstream's version and exit",
        ),
    ] = False,
) -> None:  # fmt: skip
    """Options here override RANKSTREAM_* environment variables."""
    setup_logging(verbose)
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
        _fail(f"this command needs {', '.join(missing)}: pip install 'rankstream[{extra}]'")


def _run(coroutine: Any) -> Any:
    """Run a coroutine; a RankstreamError becomes a one-line message and exit code 1."""
    try:
        return asyncio.run(coroutine)
    except RankstreamError as error:
        _fail(str(error))


def _fail(message: str) -> NoReturn:
    """Print `message` as one line (`error: ...`) and exit with code 1."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(1)


def _metrics_listener(settings: Settings, command: str) -> Listener:
    """/metrics, /livez and /readyz of `up` and `worker` (HealthServer binds every address)."""
    return Listener(
        "/metrics", settings.metrics_port, "0.0.0.0",
        f"set RANKSTREAM_METRICS_PORT or `rankstream --metrics-port N {command}` (0: off)",
    )  # fmt: skip


def _gateway_listener(settings: Settings, flag: str) -> Listener:
    return Listener(
        "the gateway", settings.gateway_port, settings.gateway_host,
        f"set RANKSTREAM_GATEWAY_PORT or {flag}",
    )  # fmt: skip


def _check_ports(*listeners: Listener) -> None:
    """Exit with one line when a port the command will listen on is taken: before anything
    loads, so it takes a moment, not the models' load time."""
    problem = first_unavailable(listeners)
    if problem is not None:
        _fail(problem)


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
    gateway_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="The gateway's port (default "
                     "RANKSTREAM_GATEWAY_PORT, 8080); 0 = no gateway"),
    ] = None,
    nats_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="The embedded nats-server's port (default "
                     "RANKSTREAM_EMBEDDED_NATS_PORT, 4222)"),
    ] = None,
) -> None:  # fmt: skip
    """Run NATS, both workers and the HTTP gateway until Ctrl-C.

    NATS is an embedded nats-server unless RANKSTREAM_NATS_URL names one. Every port is
    checked before the models load; Ctrl-C stops the gateway, the workers, NATS and /metrics
    in that order, a line each."""
    settings = _with_profile(ctx.obj, profile)
    updates = {"gateway_port": gateway_port, "embedded_nats_port": nats_port}
    settings = settings.model_copy(update={k: v for k, v in updates.items() if v is not None})
    listeners = [_metrics_listener(settings, "up"), _gateway_listener(settings, "--gateway-port")]
    if not settings.nats_url and cluster <= 1:
        listeners.insert(1, Listener(
            "the embedded nats-server", settings.embedded_nats_port, "127.0.0.1",
            "set RANKSTREAM_EMBEDDED_NATS_PORT or --nats-port (or RANKSTREAM_NATS_URL to use "
            "the server there)",
        ))  # fmt: skip
    _check_ports(*listeners)
    from rankstream.workers.stack import serve_local_stack

    _run(serve_local_stack(settings, cluster=cluster))


@app.command()
def gateway(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port (default RANKSTREAM_GATEWAY_PORT)")] = None,
) -> None:
    """Serve the HTTP gateway against the configured NATS until Ctrl-C.

    Routes: Cohere /v2/rerank, Jina/vLLM /v1/rerank, TEI /rerank and /v1/search; docs at
    /docs, metrics at /metrics."""
    settings: Settings = ctx.obj
    if port is not None:
        settings = settings.model_copy(update={"gateway_port": port})
    _check_ports(_gateway_listener(settings, "--port"))
    from rankstream.workers.gateway.app import serve_gateway

    _run(serve_gateway(settings))
    log.info("gateway stopped")


WORKER_KINDS = ("retrieval", "rerank")  # rankstream.workers.app.WorkerKind, not imported yet


@app.command()
def worker(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="retrieval or rerank")],
) -> None:
    """Run one worker against the configured NATS: one process per replica."""
    if kind not in WORKER_KINDS:
        raise typer.BadParameter("KIND must be retrieval or rerank")
    _check_ports(_metrics_listener(ctx.obj, f"worker {kind}"))
    from rankstream.workers.app import WorkerKind, serve_workers

    _run(serve_workers(ctx.obj, [WorkerKind(kind)]))


@app.command()
def demo(ctx: typer.Context) -> None:
    """Start everything, index the sample corpus and compare bi-encoder and reranked orders."""
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
        _fail(str(error))
    console.print(f"{written} documents in {settings.lancedb_uri} table {settings.table!r}")


class Retrieval(StrEnum):
    """`query --retrieval` (rankstream.wire.contract.RetrievalMode)."""

    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"


def _depth(value: str | None) -> int | Literal["auto"] | None:
    """`--depth`: a number of candidates, or `auto`."""
    if value is None:
        return None
    if value == "auto":
        return "auto"
    if not value.isdigit():
        raise typer.BadParameter(f"{value!r}: a number of candidates (0: none) or auto")
    return int(value)


@app.command()
def query(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The query")],
    top_k: Annotated[int | None, typer.Option(min=1, help="Results to return")] = None,
    depth: Annotated[
        str | None,
        typer.Option(
            metavar="N|auto",
            help="Candidates to rerank: a number (0 = none), or auto (the workers' depth "
            "policy chooses per query)",
        ),
    ] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(help="Retrieval and cascade, e.g. hybrid+ce@100/doc64>ce@20 (grammar: "
                     "`rankstream eval --help`); replaces --retrieval and --depth"),
    ] = None,
    retrieval: Annotated[
        Retrieval | None,
        typer.Option(help="Retrieval mode (default: the workers' RANKSTREAM_DEFAULT_RETRIEVAL)"),
    ] = None,
    table: Annotated[
        str | None, typer.Option(help="The LanceDB table to search (default: the workers')")
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", help="A metadata filter, e.g. \"topic = 'energy' AND year >= "
                     "2020\""),
    ] = None,
    priority: Annotated[
        int, typer.Option(min=0, max=999, help="0-333 interactive, 334-667 standard, 668-999 "
                          "batch; lower is sooner")
    ] = 0,
    cache: Annotated[
        bool, typer.Option(help="Answer from the result cache when it can (and cache the answer)")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranked result as JSON")] = (
        False
    ),
) -> None:  # fmt: skip
    """Send one query through the running pipeline and print its ranked result."""
    from pydantic import ValidationError

    from rankstream.client import RankstreamClient

    chosen_depth = _depth(depth)

    async def ask() -> Any:
        async with RankstreamClient(ctx.obj) as client:
            return await client.query(
                text, top_k=top_k, depth=chosen_depth, timeout_s=timeout, pipeline=pipeline,
                retrieval=retrieval.value if retrieval else None,
                table=table, filter=filter_, priority=priority, cache=cache,
            )  # fmt: skip

    try:
        result = _run(ask())
    except ValidationError as error:
        _fail(_invalid_query(error))
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    _print_result(result)


def _invalid_query(error: Any) -> str:
    """A query the client refused to send, as one line naming the flag at fault."""
    parts = []
    for detail in error.errors()[:3]:
        field = next((str(p) for p in detail.get("loc", ()) if isinstance(p, str)), "")
        flag = f"--{field.replace('_', '-')}: " if field else ""
        parts.append(f"{flag}{detail.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid query"


TIMING_NAMES = {
    "queue_wait": "queue wait", "cache": "cache", "embed": "embed", "search": "search",
    "rerank_queue_wait": "rerank queue wait", "batch_wait": "batch wait",
    "inference": "inference",
}  # fmt: skip


def _print_result(result: RankedResult) -> None:
    """The ranked documents, then how the answer was made and what each step took."""
    for position, doc in enumerate(result.results, start=1):
        console.print(
            f"{position:>2}. {doc.score:+7.3f} {doc.doc_id} (retrieval #{doc.retrieval_rank})",
            highlight=False,
        )
        if doc.text:
            console.print(f"    {doc.text[:160]}", style="dim", markup=False, highlight=False)
    for line in _answer_lines(result):
        console.print(line, style="dim", markup=False, highlight=False)


def _answer_lines(result: RankedResult) -> list[str]:
    """How `result` was made, in lines: retrieval, the profile that planned it, time per
    step, each rerank stage."""
    from rankstream.wire.contract import weight_text

    retrieval = result.retrieval
    made = f"retrieval: {retrieval.mode}"
    if retrieval.fusion_weight is not None:
        made += f"~{weight_text(retrieval.fusion_weight)}"
    if retrieval.chosen_depth is not None:
        made += f", depth auto chose {retrieval.chosen_depth}"
    made += f"; {result.reranked} candidates reranked"
    lines = [made]
    if result.profile is not None:
        lines.append(f"plan: the served profile's ({result.profile})")
    if result.degraded:
        lines.append("degraded: the deadline came before reranking; this is the retrieval order")
    timings = result.timings_ms
    steps = [
        f"{name} {getattr(timings, field):.0f}"
        for field, name in TIMING_NAMES.items()
        if getattr(timings, field) >= 0.5
    ]
    total = f"time (ms): total {timings.total:.0f}"
    lines.append(f"{total} ({', '.join(steps)})" if steps else total)
    if result.cached and result.stages:
        lines.append("cache hit: stage timings are from the original answer")
    elif result.cached:
        lines.append("cache hit")
    for stage in result.stages:
        lines.append(
            f"stage {stage.name}: {stage.candidates} candidates, {stage.pairs} pairs, "
            f"{stage.inference_ms:.0f} ms inference"
        )
    return lines


# Click rewraps a paragraph unless its first line is \b: the grammar keeps its lines.
PIPELINE_GRAMMAR = """\b
  PIPELINE  MODE[+STAGE{>STAGE}]
  MODE      dense | bm25 | hybrid | hybrid~W
  STAGE     SCORER@DEPTH[/docN|/maxpN|/bestN][~W]
  SCORER    ce | ce-int8 | ce-fp32 | student | maxsim
  DEPTH     a number of candidates, or auto
  W         a weight in [0, 1]"""
EVAL_HELP = f"""Measure what each pipeline gains and costs: quality, latency, pairs and CPU.

Each configuration of --configs is a pipeline:

{PIPELINE_GRAMMAR}

hybrid fuses the dense and BM25 lists by reciprocal rank, hybrid~W by normalised scores with
weight W on dense. A stage reranks the DEPTH best candidates so far with SCORER: /docN keeps
each document's first N tokens, /maxpN scores windows of N tokens and keeps the best, /bestN
scores the one window of N tokens holding the most query tokens; ~W blends the stage's score
with the order before it (W on the stage)."""
CONFIGS_HELP = (
    "Pipelines, comma-separated (grammar above), and `profile`: requests that name no "
    "pipeline, answered with the profile's plan (needs --profile or RANKSTREAM_PROFILE); e.g. "
    "dense, bm25, hybrid~0.6, dense+ce@20/doc256, hybrid+ce@30/best128~0.5, "
    "hybrid+ce@100/doc64>ce@20, profile (default: dense, bm25, hybrid, dense+ce@10, "
    "hybrid+ce@10, hybrid+ce@20, and profile when one is served)"
)


@app.command("eval", help=EVAL_HELP)
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
    """`rankstream eval` (its help: EVAL_HELP)."""
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
        _fail(str(error))
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
    """Fit the policy of depth `auto` on a train split.

    Serve it with RANKSTREAM_AUTO_DEPTH_POLICY."""
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
    data_dir: Annotated[Path, typer.Argument(help="BEIR folder (a train or dev split, or k-fold)")],
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
        int | None, typer.Option(min=1, help="With a tuning split: report on N held-out queries")
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="Folds where there is no tuning split")] = 5,
    tuning_split: Annotated[
        str | None, typer.Option(help="qrels/<split>.tsv fitted on (default: train, else dev)")
    ] = None,
    held_out_split: Annotated[
        str | None, typer.Option(help="qrels/<split>.tsv measured on (default: test, else dev)")
    ] = None,
    relevance_threshold: Annotated[
        int, typer.Option(min=1, help="Grade counted relevant by binary metrics")
    ] = 1,
    depths: Annotated[str, typer.Option(help="Rerank depths to try")] = "10,20,30",
    budgets: Annotated[
        str, typer.Option(help="Token budgets to try: /docN, /bestN, /maxpN, full")
    ] = "/best128,/doc128,/doc256",
    scorer: Annotated[
        str, typer.Option(help="The rerank scorer to tune: ce, student, maxsim (budgets full)")
    ] = "ce",
    max_minutes: Annotated[
        float,
        typer.Option(min=0, help="About how long scoring may take: queries cut to fit (0: none)"),
    ] = 30.0,
) -> None:
    """Find the plan where reranking pays off on this collection, under a cost bound.

    The plan is written as a profile: serve it with RANKSTREAM_PROFILE or `rankstream up
    --profile`."""
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
        tuning_split=tuning_split, held_out_split=held_out_split, max_minutes=max_minutes or None,
    )  # fmt: skip
    try:
        report = run_tune(ctx.obj, options, console)
    except (RankstreamError, UsageError) as error:
        _fail(str(error))
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
    """Distil the configured cross-encoder into a smaller student on your own pairs.

    With --labels it learns from the split's judgements too. Serve it with
    RANKSTREAM_STUDENT_MODEL (stage `student@K`)."""
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
    duration: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds of each load phase: saturation, 25% load, --rate; none runs longer",
        ),
    ] = 30.0,
    priority_duration: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Seconds of batch-lane load in the priority phase (default: half of "
            "--duration); 0 skips it",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout")] = False,
) -> None:
    """Measure throughput and latency through the real pipeline.

    Beside them: the model's limit and the figure without cross-request batching, on the
    same model and inputs, and each priority lane's p50, unloaded and under batch-lane load
    (`priority_p50_ms`). Each load phase lasts --duration at most; loading the models,
    warming up and timing the model alone come on top."""
    from rankstream.workers.tools.bench import BenchOptions, run_bench

    if priority_duration is None:
        priority_duration = duration / 2
    # The 25% load phase once ran max(10, 1.5 x --duration) and the priority phase at least
    # 5 s, whatever --duration said: `--duration 2` loaded the pipeline for 17 s.
    options = BenchOptions(
        data_dir=data, depth=depth, concurrency=concurrency, rate=rate, duration_s=duration,
        low_load_duration_s=duration, priority_duration_s=priority_duration,
    )  # fmt: skip
    say = Console(stderr=True, soft_wrap=True)
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
    """Measure what JetStream's `sync_interval: always` costs in latency and throughput.

    The same closed-loop load at each depth, against an embedded server with each
    sync_interval: p50/p99 latency and queries/s."""
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
    say = Console(stderr=True, soft_wrap=True)
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


@app.command("bench-peers")
def bench_peers(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Argument(help="A BEIR folder: its test queries and corpus make the workload")
    ],
    out: Annotated[Path, typer.Option(help="Folder for peers.md, peers.png, results.json")] = Path(
        "bench-peers"
    ),
    systems: Annotated[
        str, typer.Option(help="Systems to run, comma-separated (default: all)")
    ] = "",
    depths: Annotated[str, typer.Option(help="Candidates per request, comma-separated")] = "10,50",
    clients: Annotated[str, typer.Option(help="Closed-loop client counts")] = "1,8,32",
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds of each load phase")] = 20.0,
    queries: Annotated[int, typer.Option(min=1, help="Test queries in the workload")] = 100,
    doc_tokens: Annotated[
        int, typer.Option(min=8, help="Document tokens each candidate is cut to, once, for all")
    ] = 128,
    agreement_lists: Annotated[
        int, typer.Option(min=1, help="Lists compared with the fp32 model's ranking")
    ] = 10,
    infinity_venv: Annotated[
        Path | None,
        typer.Option(
            help="Infinity's own environment, made on first use (default: "
            "~/.cache/rankstream/peers/infinity)"
        ),
    ] = None,
) -> None:
    """Rerank the same workload with rankstream and the servers users would pick instead.

    rankstream over HTTP and over NATS, Infinity (torch and ONNX engines), FlashRank and a
    plain CrossEncoder.predict loop, all on the packaged reranker's weights, one at a
    time: throughput at saturation, p50/p95/p99 at each load, CPU and memory per 1,000
    pairs, rank agreement with the fp32 model. Needs `pip install 'rankstream[peers]'`."""
    _require_extra("peers", "flashrank", "httpx", "scipy", "matplotlib")
    from rankstream.workers.tools.errors import UsageError
    from rankstream.workers.tools.peers.infinity_env import DEFAULT_VENV
    from rankstream.workers.tools.peers.run import PeersOptions, run_peers

    try:
        options = PeersOptions(
            data_dir=data,
            out_dir=out,
            infinity_venv=infinity_venv or DEFAULT_VENV,
            systems=tuple(name.strip() for name in systems.split(",") if name.strip()),
            depths=_integers(depths, "--depths"),
            clients=_integers(clients, "--clients"),
            duration_s=duration,
            queries=queries,
            doc_tokens=doc_tokens,
            agreement_lists=agreement_lists,
        )
        say = Console(stderr=True, soft_wrap=True)
        _run(run_peers(ctx.obj, options, lambda line: say.print(f"[dim]{line}[/dim]")))
    except UsageError as error:
        _fail(str(error))
    console.print((out / "peers.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"written: {out / 'peers.md'}, {out / 'peers.png'}, {out / 'results.json'}")


def _integers(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(value) for value in text.split(",") if value.strip())
    except ValueError as error:
        raise typer.BadParameter(f"{option} takes positive integers like 10,50") from error
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{option} takes positive integers like 10,50")
    return values


@app.command("bench-store")
def bench_store(
    sizes: Annotated[
        str, typer.Option(help="Corpus sizes, comma-separated")
    ] = "10000,100000,1000000",
    queries: Annotated[int, typer.Option(min=1, help="Queries per size")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list on stdout")] = False,
) -> None:
    """Time LanceDB search over synthetic 384-d corpora.

    Index build time, p50/p99 latency, and recall@100 of the ANN index against exact
    search."""
    import dataclasses

    from rankstream.workers.tools.bench_store import render_table, run_store_bench

    try:
        parsed = [int(size) for size in sizes.split(",") if size.strip()]
    except ValueError as error:
        raise typer.BadParameter("--sizes takes integers like 10000,100000") from error
    say = Console(stderr=True, soft_wrap=True)
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


def first_paragraph(text: str) -> str:
    """A help text's first paragraph on one line: the command's summary."""
    return " ".join(inspect.cleandoc(text).split("\n\n")[0].split())


def _summaries() -> None:
    """Each command's summary in `rankstream --help` is the first paragraph of its help,
    whole: click would otherwise cut it at the terminal's width with "...", mid-sentence."""
    for command in app.registered_commands:
        text = command.help or (command.callback.__doc__ if command.callback else None)
        if command.short_help is None and text:
            command.short_help = first_paragraph(text)


_summaries()
