"""`rankstream bench --json` as a user runs it: one JSON object with every figure the
throughput and latency targets are judged by, measured through real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

RANKSTREAM = str(Path(sys.executable).parent / "rankstream")
REQUIRED = (
    "limit_pairs_per_s",
    "pipeline_pairs_per_s",
    "unbatched_pairs_per_s",
    "padding_ratio",
    "latency_ms",
    "model_ms_p50",
    "rerank_worker_rss_mb",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("bench")
    env = {
        **os.environ,
        "RANKSTREAM_LANCEDB_URI": str(tmp_path / "lancedb"),
        "RANKSTREAM_MAX_BATCH_PAIRS": "16",
    }
    command = [RANKSTREAM, "bench", "--json", "--duration", "3", "--concurrency", "8",
               "--priority-duration", "3"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_reports_every_required_figure_as_one_json_object(report: dict[str, Any]) -> None:
    assert set(REQUIRED) <= set(report)
    assert set(report["latency_ms"]) == {"p50", "p95", "p99"}


def test_figures_come_from_real_work(report: dict[str, Any]) -> None:
    figures = {name: float(report[name]) for name in REQUIRED if name != "latency_ms"}
    assert figures["limit_pairs_per_s"] > 0
    assert figures["pipeline_pairs_per_s"] > 0
    assert figures["unbatched_pairs_per_s"] > 0
    assert figures["padding_ratio"] >= 1.0
    assert figures["model_ms_p50"] > 0
    assert figures["rerank_worker_rss_mb"] > 100  # a loaded cross-encoder, not an idle process
    assert report["errors"] == 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    ratio = figures["pipeline_pairs_per_s"] / figures["limit_pairs_per_s"]
    assert report["pipeline_vs_limit"] == pytest.approx(ratio)


def test_times_a_bare_jetstream_hop_as_the_latency_floor(report: dict[str, Any]) -> None:
    hop = report["jetstream_hop_ms"]
    assert 0 < hop["p50"] <= hop["p95"] <= hop["p99"]
    assert hop["p50"] < report["low_load"]["latency_ms"]["p50"]


def test_runs_the_batcher_and_model_alone_between_limit_and_pipeline(
    report: dict[str, Any],
) -> None:
    scheduler = report["scheduler_pairs_per_s"]
    assert scheduler > 0
    assert report["scheduler_vs_limit"] == pytest.approx(scheduler / report["limit_pairs_per_s"])


def test_sweeps_batch_sizes_up_to_the_pair_limit(report: dict[str, Any]) -> None:
    sweep = report["model_pairs_per_s_by_batch_size"]
    assert [int(size) for size in sweep] == [1, 2, 4, 8, 16]
    assert all(pairs_per_s > 0 for pairs_per_s in sweep.values())


def test_low_load_is_a_quarter_of_saturation_and_splits_latency_by_stage(
    report: dict[str, Any],
) -> None:
    low = report["low_load"]
    assert low["offered_share_of_saturation"] == 0.25
    assert low["queries"] > 0
    stages = low["stage_ms"]
    assert {"embed", "search", "batch_wait", "inference", "total"} <= set(stages)
    assert low["latency_minus_model_ms_p50"] > 0


def test_times_each_priority_lane_unloaded_and_under_batch_traffic(
    report: dict[str, Any],
) -> None:
    lanes = report["priority_p50_ms"]
    assert set(lanes) == {"interactive", "batch"}
    assert all(lane["unloaded"] > 0 for lane in lanes.values())
    assert lanes["interactive"]["loaded"] > 0
    assert report["priority_interactive_loaded_vs_unloaded"] == pytest.approx(
        lanes["interactive"]["loaded"] / lanes["interactive"]["unloaded"]
    )
    assert report["priority_batch_completed"] > 0, "the batch lane starved"


def test_bench_sync_reports_latency_and_throughput_per_sync_interval_and_depth(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "RANKSTREAM_LANCEDB_URI": str(tmp_path / "lancedb")}
    command = [RANKSTREAM, "bench-sync", "--json", "--sync-intervals", "always,default",
               "--depths", "0,2", "--duration", "1", "--concurrency", "2"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    assert [(row["sync_interval"], row["depth"]) for row in rows] == [
        ("always", 0), ("always", 2), ("default", 0), ("default", 2),
    ]  # fmt: skip
    for row in rows:
        assert row["errors"] == 0
        assert row["queries"] > 0
        assert row["queries_per_s"] > 0
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]


def test_bench_sync_refuses_an_unknown_sync_interval() -> None:
    done = subprocess.run(
        [RANKSTREAM, "bench-sync", "--sync-intervals", "sometimes"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode != 0
    assert "sometimes" in done.stderr
