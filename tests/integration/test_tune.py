"""`rankstream tune` on a small collection built here from the sample corpus: every plan
measured on held-out queries only, a profile the workers can serve, and a choice that adds
fusion or a rerank stage only where it pays off on the tuning queries."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from rich.console import Console

from rankstream.config import Settings
from rankstream.planning.profile import load_profile
from rankstream.wire.pipeline import PipelineSpec
from rankstream.workers.tools import tune_time
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.tune import CALIBRATION_QUERIES, TuneOptions, run_tune, templates
from rankstream.workers.tools.tune_evidence import FULL
from tests.collections import sample_beir

pytestmark = pytest.mark.integration


def options(data: Path, out: Path, folds: int = 5, max_cpu_ms: float | None = None) -> TuneOptions:
    return TuneOptions(
        data_dir=data, out=out, max_cpu_ms=max_cpu_ms, folds=folds, depths=(2, 4),
        budgets=("/best32", "/doc32"),
    )  # fmt: skip


def maxsim_options(data: Path, out: Path, budgets: tuple[str, ...] = (FULL,)) -> TuneOptions:
    return TuneOptions(data_dir=data, out=out, folds=4, depths=(2, 4), budgets=budgets,
                       scorer="maxsim")  # fmt: skip


def tune(settings: Settings, options: TuneOptions) -> dict[str, object]:
    settings = settings.model_copy(update={"lancedb_uri": str(options.out.parent / "db")})
    run_tune(settings, options, Console(quiet=True))
    report: dict[str, object] = json.loads((options.out / "report.json").read_text())
    return report


def test_a_collection_without_a_train_split_is_tuned_by_cross_validation(
    settings: Settings, tmp_path: Path
) -> None:
    asked = options(sample_beir(tmp_path / "data"), tmp_path / "out", folds=4)
    report = tune(settings, asked)

    about, plans = report["about"], report["plans"]
    assert isinstance(about, dict)
    assert isinstance(plans, list)
    assert "4-fold cross-validation over 8 test queries" in about["fitted_on"]
    assert about["embedder_model"] == settings.embedder_model
    assert about["scorer_model"] == settings.reranker_model
    names = {row["template"] for row in plans}
    assert names == {template.name for template in templates(asked)}
    assert {
        "dense",
        "bm25",
        "hybrid",
        "hybrid~W",
        "tuned+@2/doc32~I",
        "tuned+@auto/best32",
    } <= names
    assert all(0 <= row["held_out_ndcg10"] <= 1 for row in plans)
    (chosen,) = [row for row in plans if row["chosen"]]
    assert chosen["plan"] == about["chosen"]
    no_rerank = [row for row in plans if "@" not in row["plan"]]
    assert all(row["pairs_per_query"] == 0 for row in no_rerank)
    assert any(row["pareto"] for row in plans)

    profile = load_profile(tmp_path / "out" / "profile.json")
    assert profile.pipeline == about["chosen"]
    PipelineSpec.parse(profile.pipeline)  # the workers can serve it
    assert (tmp_path / "out" / "report.md").read_text().count("**chosen**") == 1


def test_a_train_split_is_fitted_on_and_the_test_split_only_measured(
    settings: Settings, tmp_path: Path
) -> None:
    data = sample_beir(tmp_path / "data", train=4)
    report = tune(settings, options(data, tmp_path / "out", max_cpu_ms=0.0))

    about = report["about"]
    assert isinstance(about, dict)
    assert about["fitted_on"] == "fitted on 4 train queries, measured on 4 test queries"
    # No rerank stage costs nothing: under a bound of 0 ms the tune says which bound
    # stopped the best plan, or the best plan reranked nothing anyway.
    chosen = PipelineSpec.parse(str(about["chosen"]))
    assert not chosen.stages
    best = PipelineSpec.parse(str(about["best_unbounded"]))
    assert about["stopped_by"] == (["--max-cpu-ms 0"] if best.stages else [])


def test_a_time_too_short_for_every_query_cuts_both_lists_and_the_report_says_so(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tune_time, "MIN_QUERIES", 2)  # the sample has 4 + 4 queries
    data = sample_beir(tmp_path / "data", train=4)
    asked = dataclasses.replace(options(data, tmp_path / "out"), max_minutes=1e-6)
    report = tune(settings, asked)

    about, plans = report["about"], report["plans"]
    assert isinstance(about, dict)
    assert isinstance(plans, list)
    # The first test queries were scored to learn what a document costs: they cost no more.
    assert str(about["fitted_on"]).startswith(
        f"fitted on 2 train queries, measured on {CALIBRATION_QUERIES} test queries; "
        "cut to fit --max-minutes 1e-06 (about "
    )
    assert "to score all 8 queries)" in str(about["fitted_on"])
    assert all(0 <= row["held_out_ndcg10"] <= 1 for row in plans)
    assert set(about["cost_per_pair_cpu_ms"]) == {"/best32", "/doc32"}
    PipelineSpec.parse(load_profile(tmp_path / "out" / "profile.json").pipeline)


def test_maxsim_is_tuned_like_a_cross_encoder_from_the_stored_token_vectors(
    settings: Settings, tmp_path: Path, token_model: Path
) -> None:
    settings = settings.model_copy(update={"late_interaction_model": str(token_model)})
    asked = maxsim_options(sample_beir(tmp_path / "data"), tmp_path / "out")
    report = tune(settings, asked)  # indexes the token vectors beside the content table

    about, plans = report["about"], report["plans"]
    assert isinstance(about, dict)
    assert isinstance(plans, list)
    assert about["scorer"] == "maxsim"
    # The token model was distilled on three of the collection's queries: never tuned on.
    assert str(about["fitted_on"]).endswith("; 3 queries its scorer was trained on left out")
    assert set(about["cost_per_pair_cpu_ms"]) == {FULL}
    reranked = [row for row in plans if "@" in row["plan"]]
    assert reranked, "no plan with a maxsim stage"
    assert all("maxsim@" in row["plan"] for row in reranked)
    assert {"tuned+@4~I", "tuned+@auto"} <= {row["template"] for row in plans}
    # A maxsim "pair" is one candidate: a plan's pairs are its depths'.
    (deepest,) = [row for row in plans if row["plan"] == "dense+maxsim@4"]
    assert deepest["pairs_per_query"] == 4
    PipelineSpec.parse(str(about["chosen"]))


def test_maxsim_with_a_token_budget_is_refused_before_any_work(
    settings: Settings, tmp_path: Path, token_model: Path
) -> None:
    settings = settings.model_copy(update={"late_interaction_model": str(token_model)})
    asked = maxsim_options(sample_beir(tmp_path / "data"), tmp_path / "out", ("/doc32", FULL))
    with pytest.raises(UsageError, match="maxsim scores whole documents"):
        tune(settings, asked)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "db").exists(), "the collection was indexed before the refusal"
