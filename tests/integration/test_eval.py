"""`rankstream eval` on a small collection built here from the sample corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ranx import Qrels, Run, evaluate
from rich.console import Console

from rankstream.config import Settings
from rankstream.workers.tools.evaluate import EvalOptions, parse_configs, run_eval
from rankstream.workers.tools.evaluation import read_qrels
from rankstream.workers.tools.indexing import ensure_indexed
from tests.collections import sample_beir

pytestmark = pytest.mark.integration

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
