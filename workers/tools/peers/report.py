"""What `rankstream bench-peers` writes: per system and depth the saturated throughput, the
latency at each load, the cost per 1,000 pairs, the agreement with the fp32 model; a
markdown table and a plot of throughput against p95."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOP = 10


def agreement(
    scores: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """Spearman's rank correlation of each list's scores with the fp32 model's (the lowest and
    the mean), and the share of the fp32 top 10 each top 10 holds (the lowest)."""
    from scipy.stats import spearmanr

    rhos, overlaps = [], []
    for mine, theirs in zip(scores, reference, strict=False):
        theirs = list(theirs[: len(mine)])
        rho = float(spearmanr(mine, theirs).statistic) if len(mine) > 1 else 1.0
        rhos.append(rho)
        top = min(TOP, len(mine))
        overlaps.append(len(set(_top(mine, top)) & set(_top(theirs, top))) / top)
    if not rhos:
        return {"lists": 0, "spearman_min": None, "spearman_mean": None, "top10_overlap_min": None}
    return {
        "lists": len(rhos),
        "spearman_min": min(rhos),
        "spearman_mean": sum(rhos) / len(rhos),
        "top10_overlap_min": min(overlaps),
    }


def _top(scores: Sequence[float], n: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:n]


def summarise(results: list[dict[str, Any]], reference: list[list[float]]) -> list[dict[str, Any]]:
    """One row per system and depth."""
    rows = []
    for result in results:
        for depth in result["depths"]:
            closed = [p for p in depth["phases"] if p["clients"] is not None]
            (half,) = [p for p in depth["phases"] if p["rate"] is not None]
            best = max(closed, key=lambda p: p["pairs_per_s"])
            rows.append(
                {
                    "system": result["system"],
                    "precision": result["precision"],
                    "in_process": result["in_process"],
                    "k": depth["k"],
                    "saturated_pairs_per_s": best["pairs_per_s"],
                    "saturated_requests_per_s": best["requests_per_s"],
                    "saturated_clients": best["clients"],
                    "latency_ms": {p["clients"]: p["latency_ms"] for p in closed},
                    "half_load_rate": half["rate"],
                    "half_load_latency_ms": half["latency_ms"],
                    "errors": sum(p["errors"] for p in depth["phases"]),
                    "cpu_s_per_1000_pairs": depth["cpu_s_per_1000_pairs"],
                    "peak_rss_mb": depth["peak_rss_mb"],
                    "agreement": agreement(depth["agreement_scores"], reference),
                    "phases": depth["phases"],
                }
            )
    return rows


def _ms(latency: dict[str, float] | None) -> str:
    if not latency:
        return "-"
    return f"{latency['p50']:,.0f} / {latency['p95']:,.0f} / {latency['p99']:,.0f}"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], clients: Sequence[int]) -> str:
    latency_heads = " | ".join(
        f"p50 / p95 / p99 ms, {c} client{'s' if c > 1 else ''}" for c in clients
    )
    head = (
        f"| system | precision | k | pairs/s at saturation | requests/s | {latency_heads} "
        "| p95 ms at half load | CPU s per 1,000 pairs | peak RSS MB | Spearman vs fp32 (min) "
        "| top-10 overlap (min) | errors |"
    )
    rule = "|" + "---|" * (head.count("|") - 1)
    lines = [head, rule]
    for row in sorted(rows, key=lambda r: (r["k"], r["precision"], -r["saturated_pairs_per_s"])):
        latencies = " | ".join(_ms(row["latency_ms"].get(c)) for c in clients)
        half = row["half_load_latency_ms"]
        lines.append(
            f"| {row['system']} | {row['precision']} | {row['k']} "
            f"| {row['saturated_pairs_per_s']:.1f} | {row['saturated_requests_per_s']:.2f} "
            f"| {latencies} | {_number(half['p95'] if half else None, 0)} "
            f"| {_number(row['cpu_s_per_1000_pairs'])} | {row['peak_rss_mb']:,.0f} "
            f"| {_number(row['agreement']['spearman_min'], 4)} "
            f"| {_number(row['agreement']['top10_overlap_min'], 2)} | {row['errors']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput (pairs/s) against p95 latency, one line per system, a panel per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({row["k"] for row in rows})
    figure, axes = plt.subplots(1, len(depths), figsize=(6.5 * len(depths), 5), squeeze=False)
    for axis, k in zip(axes[0], depths, strict=True):
        for row in (r for r in rows if r["k"] == k):
            points = sorted(  # light load to heavy: latency grows with it
                (
                    (p["pairs_per_s"], p["latency_ms"]["p95"])
                    for p in row["phases"]
                    if p["latency_ms"]
                ),
                key=lambda point: point[1],
            )
            style = "-" if row["precision"] == "int8" else "--"
            axis.plot(*zip(*points, strict=True), style, marker="o", label=row["system"])
        axis.set_xlabel("pairs/s")
        axis.set_ylabel("p95 latency (ms)")
        axis.set_yscale("log")
        axis.set_title(f"k = {k} candidates per request")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Each point a load (1, 8, 32 clients, half load); solid int8, dashed fp32")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
