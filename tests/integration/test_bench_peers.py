"""`rankstream bench-peers` as a user runs it, small: every system (rankstream over HTTP and
NATS in both precisions, Infinity's two engines in their own environment, FlashRank, a
CrossEncoder.predict loop) started, loaded, measured and stopped by the command, on the same
weights; the table, the plot and the raw figures written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.collections import sample_beir

pytestmark = pytest.mark.integration

RANKSTREAM = str(Path(sys.executable).parent / "rankstream")
SYSTEMS = {
    "rankstream-http-int8", "rankstream-nats-int8", "infinity-optimum", "flashrank",
    "rankstream-http-fp32", "rankstream-nats-fp32", "infinity-torch", "predict-loop",
}  # fmt: skip
DEPTH = 5
CLIENTS = (1, 2)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("peers")
    env = os.environ | {
        "RANKSTREAM_LANCEDB_URI": str(tmp / "lancedb"),
        "RANKSTREAM_MODEL_CACHE_DIR": str(tmp / "models"),
        "HF_HUB_OFFLINE": "1",
    }
    command = [RANKSTREAM, "bench-peers", str(sample_beir(tmp / "beir")), "--out", str(tmp / "out"),
               "--depths", str(DEPTH), "--clients", ",".join(map(str, CLIENTS)),
               "--duration", "1", "--queries", "4", "--agreement-lists", "4",
               "--doc-tokens", "64"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "written:" in done.stdout
    return tmp / "out"


@pytest.fixture(scope="module")
def rows(out: Path) -> dict[str, dict[str, Any]]:
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {row["system"]: row for row in results["rows"]}


def test_every_system_ran_the_same_workload_without_an_error(
    rows: dict[str, dict[str, Any]],
) -> None:
    assert set(rows) == SYSTEMS
    for name, row in rows.items():
        assert row["k"] == DEPTH, name
        assert row["errors"] == 0, (name, [p["first_error"] for p in row["phases"]])
        assert sorted(row["latency_ms"], key=int) == [str(c) for c in CLIENTS], name
        for phase in row["phases"]:
            assert phase["requests"] > 0, (name, phase)
            latency = phase["latency_ms"]
            assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"], (name, phase)


def test_costs_are_measured_on_the_processes_that_did_the_work(
    rows: dict[str, dict[str, Any]],
) -> None:
    for name, row in rows.items():
        assert row["saturated_pairs_per_s"] > 0, name
        assert row["cpu_s_per_1000_pairs"] > 0, name
        assert row["peak_rss_mb"] > 100, name  # a loaded cross-encoder, not an idle process


def test_systems_running_the_fp32_model_rank_as_it_does(rows: dict[str, dict[str, Any]]) -> None:
    for name, row in rows.items():
        agreement = row["agreement"]
        assert agreement["lists"] == 4, name
        if row["precision"] == "fp32":
            assert agreement["spearman_min"] >= 0.99, (name, agreement)
        else:
            assert -1 <= agreement["spearman_min"] <= 1, (name, agreement)


def test_the_table_and_the_plot_are_written(out: Path) -> None:
    table = (out / "peers.md").read_text(encoding="utf-8")
    for name in SYSTEMS:
        assert f"| {name} |" in table
    assert (out / "peers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
