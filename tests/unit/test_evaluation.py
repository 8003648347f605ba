"""Evaluation: metrics checked against values computed by hand, the paired test, run files."""

from __future__ import annotations

import random
from math import log2
from pathlib import Path

import pytest

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.planning.profile import Profile
from rankstream.wire.pipeline import PipelineSpec
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.eval_report import ConfigRun, QueryOutcome, report_markdown, summarize
from rankstream.workers.tools.evaluate import eval_request, parse_configs
from rankstream.workers.tools.evaluation import (
    mean_metrics,
    ndcg_at_10,
    paired_randomization_p_value,
    per_query_metrics,
    write_trec_run,
)
from rankstream.workers.tools.stats import percentiles

QRELS = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 1, "d4": 1}}
RUN = {"q1": ["d2", "d9", "d1"], "q2": ["d8", "d7", "d3"]}


def test_metrics_match_hand_computed_values() -> None:
    metrics = mean_metrics(per_query_metrics(QRELS, RUN, relevance_threshold=1))
    # q1: gains 1, 0, 2 (linear, as trec_eval) against the ideal 2, 1.
    ndcg_q1 = (1 / log2(2) + 2 / log2(4)) / (2 / log2(2) + 1 / log2(3))
    # q2: one relevant at rank 3, another never retrieved.
    ndcg_q2 = (1 / log2(4)) / (1 / log2(2) + 1 / log2(3))
    assert metrics["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-9)
    assert metrics["MRR@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["Recall@10"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["Recall@100"] == pytest.approx(0.75)


def test_the_relevance_threshold_decides_what_binary_metrics_count() -> None:
    per_query = per_query_metrics({"q1": QRELS["q1"]}, RUN, relevance_threshold=2)
    assert per_query["MRR@10"]["q1"] == pytest.approx(1 / 3)  # only d1 (grade 2) counts
    assert per_query["Recall@10"]["q1"] == pytest.approx(1.0)


def test_a_judged_query_missing_from_the_run_counts_as_zero() -> None:
    per_query = per_query_metrics({**QRELS, "q3": {"d5": 1}}, RUN, relevance_threshold=1)
    assert per_query["nDCG@10"]["q3"] == 0.0
    assert mean_metrics(per_query)["Recall@10"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_the_paired_test_finds_a_consistent_gain_and_not_noise() -> None:
    baseline = [0.1 * (i % 7) for i in range(60)]
    better = [b + 0.2 for b in baseline]
    noisy = [b + (0.05 if i % 2 else -0.05) for i, b in enumerate(baseline)]
    assert paired_randomization_p_value(better, baseline) < 0.001
    assert paired_randomization_p_value(noisy, baseline) > 0.5
    assert paired_randomization_p_value(baseline, baseline) == 1.0


def test_percentiles_of_latencies() -> None:
    assert percentiles([float(v) for v in range(1, 101)]) == pytest.approx(
        {"p50": 50.5, "p95": 95.05, "p99": 99.01}
    )


def test_run_files_have_six_columns_and_scores_that_keep_the_order(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "x.trec"
    write_trec_run(path, RUN, "x")
    rows = [line.split() for line in path.read_text().splitlines()]
    assert rows[0] == ["q1", "Q0", "d2", "1", "3", "x"]
    assert all(len(row) == 6 for row in rows)
    q1_scores = [float(row[4]) for row in rows if row[0] == "q1"]
    assert q1_scores == sorted(q1_scores, reverse=True)


def test_the_profile_configuration_names_no_pipeline_and_needs_a_profile() -> None:
    profile = Profile(pipeline="hybrid~0.6+ce@3/best64~0.5")
    served, dense = parse_configs("profile, dense", profile)
    assert (served.name, served.asked, served.spec.name) == (
        "profile", None, "hybrid~0.6+ce@3/best64~0.5",
    )  # fmt: skip
    assert (dense.name, dense.asked) == ("dense", PipelineSpec.parse("dense"))
    client = RankstreamClient(Settings())  # builds requests without connecting
    asked = eval_request(client, served, "why", cache=False, timeout_s=5)
    assert (asked.retrieval, asked.stages, asked.fusion_weight) == (None, None, None)
    named = eval_request(client, dense, "why", cache=False, timeout_s=5)
    assert (named.retrieval, named.stages) == ("dense", [])
    with pytest.raises(UsageError, match="--profile FILE or RANKSTREAM_PROFILE"):
        parse_configs("profile,dense")
    with pytest.raises(UsageError, match="twice"):
        parse_configs("profile,dense,profile", profile)


def test_the_report_names_the_profiles_pipeline_beside_profile() -> None:
    outcome = QueryOutcome("q1", ["d1"], 10.0)
    runs = [
        ConfigRun("profile", [outcome], 1.0, 0.5, pipeline="hybrid~0.6+ce@3"),
        ConfigRun("dense", [outcome], 1.0, 0.5, pipeline="dense"),
    ]
    summaries = summarize(runs, {"q1": {"d1": 1}}, 1, "dense")
    about = {
        "collection": "c", "split": "test", "queries": 1, "concurrency": 1,
        "embedder_model": "e", "reranker_model": "r", "max_length": 512, "baseline": "dense",
        "relevance_threshold": 1,
    }  # fmt: skip
    report = report_markdown(summaries, [], about)
    rows = [line for line in report.splitlines() if "| 1.0000" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| profile (hybrid~0.6+ce@3)", "| dense"]


def test_the_tunes_ndcg_agrees_with_trec_eval_on_graded_judgments() -> None:
    rng = random.Random(3)
    docs = [f"d{i}" for i in range(30)]
    qrels = {
        f"q{n}": {doc: rng.choice([0, 0, 1, 2, 3]) for doc in rng.sample(docs, 12)}
        for n in range(20)
    }
    run = {qid: rng.sample(docs, 15) for qid in qrels}
    run["q0"] = []  # a query the run missed scores 0 in both

    reference = per_query_metrics(qrels, run, relevance_threshold=2)["nDCG@10"]
    assert ndcg_at_10(qrels, run) == pytest.approx(reference)
