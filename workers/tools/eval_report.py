"""From evaluated runs to numbers and files: metrics.json, report.md, tradeoff.png, runs/."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankstream.wire.messages import StageTimings
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

BASELINE = "retrieval"


@dataclass
class QueryOutcome:
    query_id: str
    doc_ids: list[str]
    latency_ms: float
    timings: StageTimings | None = None
    reranked: int = 0
    error: str | None = None


@dataclass
class ConfigRun:
    name: str
    depth: int
    outcomes: list[QueryOutcome]
    wall_s: float

    @property
    def run(self) -> RankedRun:
        return {o.query_id: o.doc_ids for o in self.outcomes if o.error is None}


@dataclass
class ConfigSummary:
    name: str
    depth: int
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    stage_median_ms: dict[str, float]
    pairs_per_query: float
    throughput_qps: float
    errors: int
    p_value: float | None = None
    gain_per_100ms: float | None = None
    per_query_ndcg: dict[str, float] = field(default_factory=dict, repr=False)


def summarize(runs: list[ConfigRun], qrels: Qrels, relevance_threshold: int) -> list[ConfigSummary]:
    """Metrics, latency and the paired test against the retrieval-only baseline."""
    judged = {qid: qrels[qid] for o in runs[0].outcomes if (qid := o.query_id) in qrels}
    summaries = [_summary(run, judged, relevance_threshold) for run in runs]
    baseline = next(s for s in summaries if s.name == BASELINE)
    for summary in summaries:
        if summary is baseline:
            continue
        qids = sorted(judged)
        summary.p_value = paired_randomization_p_value(
            [summary.per_query_ndcg[q] for q in qids], [baseline.per_query_ndcg[q] for q in qids]
        )
        added_ms = summary.latency_ms["p50"] - baseline.latency_ms["p50"]
        gain = summary.metrics["nDCG@10"] - baseline.metrics["nDCG@10"]
        summary.gain_per_100ms = gain / (added_ms / 100) if added_ms > 0 else None
    return summaries


def _summary(run: ConfigRun, qrels: Qrels, relevance_threshold: int) -> ConfigSummary:
    per_query = per_query_metrics(qrels, run.run, relevance_threshold)
    answered = [o for o in run.outcomes if o.error is None]
    stages = [o.timings.model_dump() for o in answered if o.timings is not None]
    return ConfigSummary(
        name=run.name,
        depth=run.depth,
        metrics=mean_metrics(per_query),
        latency_ms=percentiles([o.latency_ms for o in answered] or [0.0]),
        stage_median_ms={k: median([s[k] for s in stages]) for k in StageTimings.model_fields},
        pairs_per_query=sum(o.reranked for o in answered) / max(1, len(answered)),
        throughput_qps=len(answered) / run.wall_s if run.wall_s > 0 else 0.0,
        errors=len(run.outcomes) - len(answered),
        per_query_ndcg=per_query["nDCG@10"],
    )


def write_outputs(
    out_dir: Path, runs: list[ConfigRun], summaries: list[ConfigSummary], about: dict[str, Any]
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        write_trec_run(out_dir / "runs" / f"{run.name}.trec", run.run, run.name)
    document = {**about, "configs": [_jsonable(s) for s in summaries]}
    (out_dir / "metrics.json").write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    (out_dir / "report.md").write_text(report_markdown(summaries, about), "utf-8")
    plot_tradeoff(summaries, out_dir / "tradeoff.png", about)


def _jsonable(summary: ConfigSummary) -> dict[str, Any]:
    return {
        "name": summary.name,
        "depth": summary.depth,
        "run_file": f"runs/{summary.name}.trec",
        "metrics": summary.metrics,
        "latency_ms": summary.latency_ms,
        "stage_median_ms": summary.stage_median_ms,
        "pairs_per_query": summary.pairs_per_query,
        "throughput_qps": summary.throughput_qps,
        "errors": summary.errors,
        "p_value_vs_retrieval": summary.p_value,
        "ndcg10_gain_per_100ms": summary.gain_per_100ms,
    }


def report_markdown(summaries: list[ConfigSummary], about: dict[str, Any]) -> str:
    header = (
        "| configuration | " + " | ".join(METRIC_NAMES) + " | p50 ms | p95 ms | p99 ms | "
        "pairs/query | queries/s | nDCG@10 gain per +100 ms | p-value |"
    )
    rule = "|" + "---|" * (len(METRIC_NAMES) + 8)
    rows = [_row(s) for s in summaries]
    return "\n".join(
        [
            f"# Is the reranker worth its latency? {about['collection']} ({about['split']})",
            "",
            f"{about['queries']} queries, {about['concurrency']} in flight, through the running "
            f"pipeline. Embedder `{about['embedder_model']}`, reranker "
            f"`{about['reranker_model']}` (max length {about['max_length']}). Latency is "
            "end to end as the client sees it. Binary metrics count grade >= "
            f"{about['relevance_threshold']}. p-value: two-sided paired randomisation test "
            "of per-query nDCG@10 against retrieval only (10,000 resamples).",
            "",
            header,
            rule,
            *rows,
            "",
            "## Verdict",
            "",
            verdict(summaries),
            "",
        ]
    )


def _row(s: ConfigSummary) -> str:
    metrics = " | ".join(f"{s.metrics[m]:.4f}" for m in METRIC_NAMES)
    gain = "—" if s.gain_per_100ms is None else f"{s.gain_per_100ms:+.4f}"
    p_value = "—" if s.p_value is None else f"{s.p_value:.4f}"
    return (
        f"| {s.name} | {metrics} | {s.latency_ms['p50']:.0f} | {s.latency_ms['p95']:.0f} | "
        f"{s.latency_ms['p99']:.0f} | {s.pairs_per_query:.1f} | {s.throughput_qps:.2f} | "
        f"{gain} | {p_value} |"
    )


def verdict(summaries: list[ConfigSummary]) -> str:
    baseline = next(s for s in summaries if s.name == BASELINE)
    reranked = [s for s in summaries if s.gain_per_100ms is not None]
    if not reranked:
        return "No rerank configuration added measurable latency; nothing to trade."
    best = max(reranked, key=lambda s: s.gain_per_100ms or 0.0)
    top = max(summaries, key=lambda s: s.metrics["nDCG@10"])
    base_ndcg = baseline.metrics["nDCG@10"]
    significant = best.p_value is not None and best.p_value < 0.05
    return (
        f"Retrieval alone reaches nDCG@10 {base_ndcg:.4f} at {baseline.latency_ms['p50']:.0f} ms "
        f"p50. The best gain per millisecond comes from **rerank depth {best.depth}**: "
        f"nDCG@10 {best.metrics['nDCG@10']:.4f} ({best.metrics['nDCG@10'] - base_ndcg:+.4f}, "
        f"p = {best.p_value:.4f}, {'significant' if significant else 'not significant'} at "
        f"0.05) for {best.latency_ms['p50'] - baseline.latency_ms['p50']:.0f} ms more at p50 "
        f"({best.gain_per_100ms:+.4f} nDCG@10 per added 100 ms). The highest quality is "
        f"{top.name} (nDCG@10 {top.metrics['nDCG@10']:.4f}, p95 {top.latency_ms['p95']:.0f} "
        "ms); each deeper step costs more latency per point gained, so choose the deepest "
        "depth whose p95 fits your latency budget."
    )


def plot_tradeoff(summaries: list[ConfigSummary], path: Path, about: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    x = [s.latency_ms["p95"] for s in summaries]
    y = [s.metrics["nDCG@10"] for s in summaries]
    axes.plot(x, y, "o-", color="tab:blue")
    for s, xi, yi in zip(summaries, x, y, strict=True):
        axes.annotate(s.name, (xi, yi), textcoords="offset points", xytext=(6, -12))
    if min(x) > 0 and max(x) / min(x) > 20:
        axes.set_xscale("log")
    axes.set_xlabel("end-to-end latency p95 (ms)")
    axes.set_ylabel("nDCG@10")
    axes.set_title(f"Quality vs latency: {about['collection']} ({about['queries']} queries)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
