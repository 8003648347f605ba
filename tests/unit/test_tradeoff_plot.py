"""`eval`'s tradeoff.png: a log-scale latency axis reads in plain milliseconds."""

import re

import pytest

from rankstream.workers.tools.eval_report import ConfigSummary, tradeoff_figure

plt = pytest.importorskip("matplotlib.pyplot")

PLAIN_MS = re.compile(r"^\d{1,3}(,\d{3})*$")


def summary(name: str, p95_ms: float, ndcg: float) -> ConfigSummary:
    return ConfigSummary(
        name=name, metrics={"nDCG@10": ndcg}, latency_ms={"p95": p95_ms}, stage_median_ms={},
        pairs_per_query=0.0, cpu_s_per_query=0.0, throughput_qps=0.0, errors=0, pareto=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "latencies",
    [
        [30.0, 80.0, 310.0, 420.0, 700.0],  # under two decades: matplotlib labels minor ticks
        [3.0, 40.0, 120.0, 8000.0],  # over three
    ],
)
def test_log_latency_axis_labels_plain_milliseconds_and_no_minor_ticks(
    latencies: list[float],
) -> None:
    summaries = [summary(f"c{i}", ms, 0.5 + i / 100) for i, ms in enumerate(latencies)]
    figure = tradeoff_figure(summaries, {"collection": "test", "queries": 10})
    try:
        figure.canvas.draw()
        axis = figure.axes[0].xaxis
        assert figure.axes[0].get_xscale() == "log"
        low, high = figure.axes[0].get_xlim()
        labels = zip(axis.get_ticklabels(), axis.get_ticklocs(), strict=True)
        major = [tick.get_text() for tick, at in labels if low <= at <= high]
        minor = [tick.get_text() for tick in axis.get_ticklabels(minor=True)]
    finally:
        plt.close(figure)
    assert len(major) >= 3, major
    assert all(PLAIN_MS.match(label) for label in major), major
    assert not any(minor), minor
