"""`rankstream eval` on a small collection built here from the sample corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ranx import Qrels, Run, evaluate
from rich.console import Console

from rankstream.config import Settings
from rankstream.planning.profile import Profile
from rankstream.workers.tools.evaluate import EvalOptions, parse_configs, run_eval
from rankstream.workers.tools.evaluation import read_qrels
from rankstream.workers.tools.indexing import ensure_indexed
from tests.collections import sample_beir

pytestmark = pytest.mark.integration

RANKSTREAM = str(Path(sys.executable).parent / "rankstream")
RANX_NAMES = {"nDCG@10": "ndcg@10", "MRR@10": "mrr@10", "Recall@10": "recall@10",
              "Recall@100": "recall@100"}  # fmt: skip


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    """BEIR layout: the sample passages, its queries, and their answers as grade-1 judgments."""
    return sample_beir(tmp_path / "sample-beir")


async def test_eval_writes_every_output_and_its_run_files_score_the_same_elsewhere(
    settings: Settings, collection: Path, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"nats_url": None, "lancedb_uri": str(tmp_path / "db")})
    out = tmp_path / "out"
    options = EvalOptions(
        data_dir=collection,
        out_dir=out,
        configs=parse_configs("dense,bm25,hybrid,dense+ce@10,hybrid+ce@10>ce@5"),
        concurrency=4,
        repeat_zipf=1.1,
    )
    await run_eval(settings, options, Console(quiet=True))

    configs = {c["name"]: c for c in json.loads((out / "metrics.json").read_text())}
    assert list(configs) == [
        "dense", "bm25", "hybrid", "dense+ce@10", "hybrid+ce@10>ce@5",
    ]  # fmt: skip
    assert (out / "tradeoff.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "| dense+ce@10 |" in report
    assert "## Verdict" in report
    assert "cheapest within" in report
    qrels = Qrels.from_dict(read_qrels(collection, "test"))
    for name, config in configs.items():
        run = Run.from_file(str(out / config["run_file"]), kind="trec")
        independent = evaluate(qrels, run, list(RANX_NAMES.values()))
        for ours, theirs in RANX_NAMES.items():
            assert config["metrics"][ours] == pytest.approx(independent[theirs], abs=1e-4), name
        assert config["errors"] == 0
        assert set(config["latency_ms"]) == {"p50", "p95", "p99"}
        assert config["cpu_s_per_query"] > 0
    assert configs["dense"]["p_value_vs_baseline"] is None  # the baseline itself
    assert configs["dense+ce@10"]["pairs_per_query"] == 10
    assert configs["hybrid+ce@10>ce@5"]["pairs_per_query"] == 15
    assert configs["dense+ce@10"]["p_value_vs_baseline"] is not None
    assert any(config["pareto"] for config in configs.values())
    # The sample is written so that the reranker fixes what the bi-encoder gets wrong.
    assert configs["dense+ce@10"]["metrics"]["nDCG@10"] > configs["dense"]["metrics"]["nDCG@10"]
    (replay, *_) = json.loads((out / "about.json").read_text())["cache_replay"]
    assert replay["hit_ratio"] > 0, "a Zipf replay of 8 queries repeats some: cache hits"


def test_an_indexed_collection_is_reused_and_a_changed_one_is_not(
    settings: Settings, collection: Path, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"lancedb_uri": str(tmp_path / "db")})
    console = Console(record=True, width=200)
    first = ensure_indexed(settings, collection, console)
    again = ensure_indexed(settings, collection, console)
    assert again.table == first.table
    assert "reusing table" in console.export_text()
    with (collection / "corpus.jsonl").open("a") as corpus:
        corpus.write(json.dumps({"_id": "new-doc", "text": "A new passage."}) + "\n")
    changed = ensure_indexed(settings, collection, console)
    assert changed.table != first.table


def test_eval_runs_the_profile_the_workers_serve_beside_named_pipelines(
    collection: Path, tmp_path: Path, model_cache_dir: Path
) -> None:
    """`rankstream eval --profile FILE --configs profile,...`: the `profile` rows' requests
    name no pipeline, so the workers' own plan answers them; one at a time (no batch-mates
    for the int8 model), that plan asked by name ranks every query the same."""
    tuned = "hybrid~0.6+ce@3/best64~0.5"
    profile = tmp_path / "profile.json"
    profile.write_text(Profile(pipeline=tuned, about={"fitted_on": "a test"}).to_json())
    out = tmp_path / "out"
    env = {
        **os.environ,
        "RANKSTREAM_LANCEDB_URI": str(tmp_path / "db"),
        "RANKSTREAM_MODEL_CACHE_DIR": str(model_cache_dir),
        "COLUMNS": "200",
    }
    env.pop("RANKSTREAM_PROFILE", None)
    env.pop("RANKSTREAM_NATS_URL", None)  # eval starts its own
    completed = subprocess.run(
        [RANKSTREAM, "eval", str(collection), "--configs", f"profile,dense,{tuned}",
         "--profile", str(profile), "--concurrency", "1", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr

    configs = {c["name"]: c for c in json.loads((out / "metrics.json").read_text())}
    assert list(configs) == ["profile", "dense", tuned]
    served = configs["profile"]
    assert served["pipeline"] == tuned
    assert served["errors"] == 0
    assert served["pairs_per_query"] == 3  # the profile's one stage, ce@3: dense has none
    assert configs["dense"]["pairs_per_query"] == 0
    assert served["p_value_vs_baseline"] is None  # the first configuration is the baseline
    assert f"| profile ({tuned}) |" in (out / "report.md").read_text()
    about = json.loads((out / "about.json").read_text())
    assert about["profile"]["pipeline"] == tuned
    assert about["profile"]["file"] == str(profile)
    runs = {
        name: Run.from_file(str(out / config["run_file"]), kind="trec").to_dict()
        for name, config in configs.items()
    }
    assert runs["profile"] == runs[tuned]  # the same documents at the same ranks
    assert runs["profile"] != runs["dense"]


def test_eval_refuses_the_profile_configuration_without_a_profile(collection: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("RANKSTREAM_PROFILE", None)
    completed = subprocess.run(
        [RANKSTREAM, "eval", str(collection), "--configs", "profile,dense"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "--profile FILE or RANKSTREAM_PROFILE" in completed.stdout + completed.stderr
