"""From evaluated runs to numbers and files: metrics.json, report.md, tradeoff.png, runs/."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstream.wire.contract import StageTimings
from rankstream.workers.tools.evaluation import (
    METRIC_NAMES,
    Qrels,
    RankedRun,
    mean_metrics,
    paired_randomization_p_value,
    per_query_metrics,
    write_trec_run,
)
from rankstream.workers.tools.stats import median, percentiles

# "Within this much nDCG@10 of the best" is "as good" for the cheapest-configuration verdict.
AS_GOOD = 0.005


@dataclass
class QueryOutcome:
    query_id: str
    doc_ids: list[str]
    latency_ms: float
    timings: StageTimings | None = None
    pairs: int = 0
    cached: bool = False
    error: str | None = None


@dataclass
class ConfigRun:
    name: str
    outcomes: list[QueryOutcome]
    wall_s: float
    worker_cpu_s: float
    pipeline: str | None = None  # the plan it ran, where `name` is not one (`profile`)

    @property
    def run(self) -> RankedRun:
        return {o.query_id: o.doc_ids for o in self.outcomes if o.error is None}


@dataclass
class ReplayRun:
    """The same configuration replayed with a Zipf-distributed repeat of the queries."""

    name: str
    exponent: float
    outcomes: list[QueryOutcome]

    def summary(self) -> dict[str, Any]:
        answered = [o for o in self.outcomes if o.error is None]
        hits = [o.latency_ms for o in answered if o.cached]
        misses = [o.latency_ms for o in answered if not o.cached]
        return {
            "config": self.name,
            "zipf_exponent": self.exponent,
            "requests": len(self.outcomes),
            "distinct_queries": len({o.query_id for o in self.outcomes}),
            "hit_ratio": len(hits) / max(1, len(answered)),
            "hit_latency_ms": percentiles(hits or [0.0]),
            "miss_latency_ms": percentiles(misses or [0.0]),
            "latency_ms": percentiles([o.latency_ms for o in answered] or [0.0]),
            "errors": len(self.outcomes) - len(answered),
        }


@dataclass
class ConfigSummary:
    name: str
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    stage_median_ms: dict[str, float]
    pairs_per_query: float
    cpu_s_per_query: float
    throughput_qps: float
    errors: int
    p_value: float | None = None
    pareto: bool = False
    per_query_ndcg: dict[str, float] = field(default_factory=dict, repr=False)
    pipeline: str | None = None

    @property
    def label(self) -> str:
        """The name, and the pipeline beside it where the name is not one:
        `profile (hybrid~0.6+ce@30/best128~0.5)`."""
        if self.pipeline is None or self.pipeline == self.name:
            return self.name
        return f"{self.name} ({self.pipeline})"


def summarize(
    runs: list[ConfigRun], qrels: Qrels, relevance_threshold: int, baseline: str
) -> list[ConfigSummary]:
    """Metrics, latency, cost, the paired test against `baseline`, the Pareto frontier."""
    judged = {qid: qrels[qid] for o in runs[0].outcomes if (qid := o.query_id) in qrels}
    summaries = [_summary(run, judged, relevance_threshold) for run in runs]
    reference = next(s for s in summaries if s.name == baseline)
    qids = sorted(judged)
    for summary in summaries:
        if summary is not reference:
            summary.p_value = paired_randomization_p_value(
                [summary.per_query_ndcg[q] for q in qids],
                [reference.per_query_ndcg[q] for q in qids],
            )
    for summary in summaries:
        summary.pareto = not any(_dominates(other, summary) for other in summaries)
    return summaries


def _dominates(a: ConfigSummary, b: ConfigSummary) -> bool:
    """`a` is at least as good as `b` on quality and p95 latency, and better on one."""
    qa, qb = a.metrics["nDCG@10"], b.metrics["nDCG@10"]
    la, lb = a.latency_ms["p95"], b.latency_ms["p95"]
    return qa >= qb and la <= lb and (qa > qb or la < lb)


def _summary(run: ConfigRun, qrels: Qrels, relevance_threshold: int) -> ConfigSummary:
    per_query = per_query_metrics(qrels, run.run, relevance_threshold)
    answered = [o for o in run.outcomes if o.error is None]
    stages = [o.timings.model_dump() for o in answered if o.timings is not None]
    return ConfigSummary(
        name=run.name,
        metrics=mean_metrics(per_query),
        latency_ms=percentiles([o.latency_ms for o in answered] or [0.0]),
        stage_median_ms={k: median([s[k] for s in stages]) for k in StageTimings.model_fields},
        pairs_per_query=sum(o.pairs for o in answered) / max(1, len(answered)),
        cpu_s_per_query=run.worker_cpu_s / max(1, len(answered)),
        throughput_qps=len(answered) / run.wall_s if run.wall_s > 0 else 0.0,
        errors=len(run.outcomes) - len(answered),
        per_query_ndcg=per_query["nDCG@10"],
        pipeline=run.pipeline,
    )


def cheapest_as_good(summaries: list[ConfigSummary]) -> tuple[ConfigSummary, ConfigSummary]:
    """(the best configuration by nDCG@10, the cheapest by CPU per query within AS_GOOD)."""
    best = max(summaries, key=lambda s: s.metrics["nDCG@10"])
    floor = best.metrics["nDCG@10"] - AS_GOOD
    cheapest = min(
        (s for s in summaries if s.metrics["nDCG@10"] >= floor), key=lambda s: s.cpu_s_per_query
    )
    return best, cheapest


def write_outputs(
    out_dir: Path,
    runs: list[ConfigRun],
    summaries: list[ConfigSummary],
    replays: list[ReplayRun],
    about: dict[str, Any],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        write_trec_run(out_dir / "runs" / f"{run_file_stem(run.name)}.trec", run.run, run.name)
    configs = [_jsonable(s, about["baseline"]) for s in summaries]
    (out_dir / "metrics.json").write_text(json.dumps(configs, indent=2) + "\n", "utf-8")
    document = {**about, "cache_replay": [r.summary() for r in replays]}
    (out_dir / "about.json").write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    (out_dir / "report.md").write_text(report_markdown(summaries, replays, about), "utf-8")
    plot_tradeoff(summaries, out_dir / "tradeoff.png", about)


def run_file_stem(name: str) -> str:
    """A file name for a configuration: `>` and `/` are not welcome in paths."""
    return name.replace(">", "_then_").replace("/", "_")


def _jsonable(summary: ConfigSummary, baseline: str) -> dict[str, Any]:
    return {
        "name": summary.name,
        "pipeline": summary.pipeline or summary.name,
        "run_file": f"runs/{run_file_stem(summary.name)}.trec",
        "metrics": summary.metrics,
        "latency_ms": summary.latency_ms,
        "stage_median_ms": summary.stage_median_ms,
        "pairs_per_query": summary.pairs_per_query,
        "cpu_s_per_query": summary.cpu_s_per_query,
        "throughput_qps": summary.throughput_qps,
        "errors": summary.errors,
        "baseline": baseline,
        "p_value_vs_baseline": summary.p_value,
        "pareto": summary.pareto,
    }


def report_markdown(
    summaries: list[ConfigSummary], replays: list[ReplayRun], about: dict[str, Any]
) -> str:
    header = (
        "| configuration | " + " | ".join(METRIC_NAMES) + " | p50 ms | p95 ms | pairs/query | "
        "CPU s/query | p-value | Pareto |"
    )
    rule = "|" + "---|" * (len(METRIC_NAMES) + 7)
    lines = [
        f"# Quality against cost: {about['collection']} ({about['split']})",
        "",
        f"{about['queries']} queries, {about['concurrency']} in flight, through the running "
        f"pipeline (worker processes). Embedder `{about['embedder_model']}`, reranker "
        f"`{about['reranker_model']}` (max length {about['max_length']}). Latency is end to "
        "end as the client sees it; CPU is both workers' CPU time over the configuration's "
        f"run. p-value: two-sided paired randomisation test of per-query nDCG@10 against "
        f"`{about['baseline']}` (10,000 resamples). Binary metrics count grade >= "
        f"{about['relevance_threshold']}.",
        "",
        header,
        rule,
        *(_row(s) for s in summaries),
        "",
        "## Verdict",
        "",
        verdict(summaries),
        "",
    ]
    if replays:
        lines += ["## Result cache (Zipf replay)", "", _replay_table(replays), ""]
    return "\n".join(lines)


def _row(s: ConfigSummary) -> str:
    metrics = " | ".join(f"{s.metrics[m]:.4f}" for m in METRIC_NAMES)
    p_value = "—" if s.p_value is None else f"{s.p_value:.4f}"
    return (
        f"| {s.label} | {metrics} | {s.latency_ms['p50']:.0f} | {s.latency_ms['p95']:.0f} | "
        f"{s.pairs_per_query:.1f} | {s.cpu_s_per_query:.3f} | {p_value} | "
        f"{'yes' if s.pareto else ''} |"
    )


def verdict(summaries: list[ConfigSummary]) -> str:
    best, cheapest = cheapest_as_good(summaries)
    share = cheapest.cpu_s_per_query / best.cpu_s_per_query if best.cpu_s_per_query else 0.0
    return (
        f"The best configuration is **{best.label}** (nDCG@10 {best.metrics['nDCG@10']:.4f}, "
        f"{best.cpu_s_per_query:.3f} CPU s and p95 {best.latency_ms['p95']:.0f} ms a query). "
        f"The cheapest within {AS_GOOD} nDCG@10 of it is **{cheapest.label}** (nDCG@10 "
        f"{cheapest.metrics['nDCG@10']:.4f}, {cheapest.cpu_s_per_query:.3f} CPU s a query: "
        f"{share:.0%} of the best's, p95 {cheapest.latency_ms['p95']:.0f} ms)."
    )


def _replay_table(replays: list[ReplayRun]) -> str:
    rows = [
        "| configuration | requests | distinct | hit ratio | hit p50 ms | miss p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for replay in replays:
        s = replay.summary()
        rows.append(
            f"| {s['config']} | {s['requests']} | {s['distinct_queries']} | "
            f"{s['hit_ratio']:.2f} | {s['hit_latency_ms']['p50']:.1f} | "
            f"{s['miss_latency_ms']['p50']:.0f} |"
        )
    return "\n".join(rows)


def plot_tradeoff(summaries: list[ConfigSummary], path: Path, about: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = tradeoff_figure(summaries, about)
    figure.savefig(path)
    plt.close(figure)


def tradeoff_figure(summaries: list[ConfigSummary], about: dict[str, Any]) -> Any:
    """nDCG@10 against p95 latency per configuration, the Pareto frontier joined: a
    matplotlib Figure (close it with `plt.close`)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for s in summaries:
        x, y = s.latency_ms["p95"], s.metrics["nDCG@10"]
        axes.plot(x, y, "o", color="tab:blue" if s.pareto else "tab:gray")
        axes.annotate(s.label, (x, y), textcoords="offset points", xytext=(5, -11), fontsize=7)
    frontier = sorted((s for s in summaries if s.pareto), key=lambda s: s.latency_ms["p95"])
    axes.plot(
        [s.latency_ms["p95"] for s in frontier],
        [s.metrics["nDCG@10"] for s in frontier],
        "-",
        color="tab:blue",
        label="Pareto frontier",
    )
    latencies = [s.latency_ms["p95"] for s in summaries]
    if min(latencies) > 0 and max(latencies) / min(latencies) > 20:
        axes.set_xscale("log")
        plain_millisecond_ticks(axes.xaxis)
    axes.set_xlabel("end-to-end latency p95 (ms)")
    axes.set_ylabel("nDCG@10")
    axes.set_title(f"Quality vs latency: {about['collection']} ({about['queries']} queries)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def plain_millisecond_ticks(axis: Any) -> None:
    """A log-scale latency axis labelled in plain milliseconds at 1, 2 and 5 of each power of
    ten (`20`, `50`, `100`, `2,000`), its minor ticks unlabelled. matplotlib's own labels are
    powers (`10²`) and, on a range under two decades, labels on the minor ticks too
    (`3×10²4×10²`), which run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_milliseconds))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(float(n) for n in range(2, 10))))
    axis.set_minor_formatter(NullFormatter())


def _milliseconds(value: float, _position: object = None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"
