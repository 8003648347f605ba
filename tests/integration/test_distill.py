"""`rankstream distill` on a tiny split: real teacher (the packaged cross-encoder), real
retrieval over a real LanceDB table, one training step of a real student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from rankstream.config import Settings
from rankstream.models.registry import load_cross_encoder
from rankstream.retrieval.corpus import sample_corpus_path, sample_queries
from rankstream.workers.tools.distill import (
    DistillOptions,
    run_distill,
    student_start,
)
from rankstream.workers.tools.errors import UsageError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def beir_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus as a BEIR folder, every sample query in a `train` split."""
    folder = tmp_path_factory.mktemp("beir")
    (folder / "corpus.jsonl").write_bytes(sample_corpus_path().read_bytes())
    queries = sample_queries()
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q.query_id, "text": q.text}) + "\n" for q in queries)
    )
    (folder / "qrels").mkdir()
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q.query_id}\t{doc}\t1\n" for q in queries for doc in q.relevant)
    )
    return folder


@pytest.fixture
def settings(tmp_path: Path, model_cache_dir: Path) -> Settings:
    return Settings(lancedb_uri=str(tmp_path / "db"), model_cache_dir=model_cache_dir)


def squared_error(model_scores: list[float], teacher: list[float]) -> float:
    return float(np.mean((np.asarray(model_scores) - np.asarray(teacher)) ** 2))


def margin_error(model_scores: list[float], teacher: list[float], per_list: int) -> float:
    """Squared error of each list's scores around its own mean: the order and spacing within
    a list, whatever offset a query's scores have."""
    ours, theirs = (np.asarray(s).reshape(-1, per_list) for s in (model_scores, teacher))
    ours, theirs = (m - m.mean(axis=1, keepdims=True) for m in (ours, theirs))
    return float(np.mean((ours - theirs) ** 2))


PROBE_QUERIES, PROBE_DOCUMENTS = 4, 8


def probe_pairs() -> list[tuple[str, str]]:
    """Sample queries, each with the same first documents of the sample corpus."""
    texts = [json.loads(line)["text"] for line in sample_corpus_path().read_text().splitlines()]
    queries = sample_queries()[:PROBE_QUERIES]
    return [(q.text, doc) for q in queries for doc in texts[:PROBE_DOCUMENTS]]


def probe_scores(
    settings: Settings, options: DistillOptions, student_dir: Path
) -> tuple[list[float], list[float], list[float]]:
    """The probe pairs' scores by the teacher, the untrained student and the trained one."""
    probe = probe_pairs()
    teacher = load_cross_encoder(settings)
    trained = load_cross_encoder(settings, str(student_dir))  # the torch folder
    untrained, _ = student_start(settings, options)
    before = [float(s) for s in untrained.predict(probe, activation_fn=None)]
    return (
        teacher.score(teacher.tokenizer.encode(probe)),
        before,
        trained.score(trained.tokenizer.encode(probe)),
    )


def test_one_step_of_distillation_moves_the_student_toward_the_teacher(
    beir_sample: Path, tmp_path: Path, settings: Settings
) -> None:
    options = DistillOptions(
        beir_sample, tmp_path / "student", limit=4, depth=8, mode="dense",
        batch_size=32, learning_rate=2e-4, max_length=128,
        teacher_cache=tmp_path / "teacher.sqlite",
    )  # fmt: skip
    report = run_distill(settings, options, Console(quiet=True))

    assert report.pairs == 32
    assert report.pairs_scored_now == 32
    assert report.layers_kept == [0, 2, 4, 6, 8, 10]
    target, before, after = probe_scores(settings, options, report.student_dir)
    assert squared_error(after, target) < squared_error(before, target)
    served = load_cross_encoder(settings, str(report.onnx_dir))  # its int8 ONNX copy
    int8 = served.score(served.tokenizer.encode(probe_pairs()))
    assert np.corrcoef(int8, after)[0, 1] > 0.95, "the int8 export scores as the student does"
    assert served.model_id == str(report.onnx_dir)


def test_a_rerun_scores_no_pair_twice(
    beir_sample: Path, tmp_path: Path, settings: Settings
) -> None:
    """Teacher scores come back from the cache; only the student is trained again."""
    options = DistillOptions(
        beir_sample, tmp_path / "student", limit=2, depth=4, mode="dense", layers=2,
        batch_size=8, max_length=64, teacher_cache=tmp_path / "teacher.sqlite",
    )  # fmt: skip
    first = run_distill(settings, options, Console(quiet=True))
    again = run_distill(settings, options, Console(quiet=True))
    assert (first.pairs_scored_now, again.pairs_scored_now) == (8, 0)
    assert again.layers_kept == [0, 1]


def test_margin_mse_moves_each_lists_differences_toward_the_teachers(
    beir_sample: Path, tmp_path: Path, settings: Settings
) -> None:
    options = DistillOptions(
        beir_sample, tmp_path / "student", limit=4, depth=8, mode="dense", batch_size=32,
        learning_rate=2e-4, max_length=128, teacher_cache=tmp_path / "teacher.sqlite",
        loss="margin-mse",
    )  # fmt: skip
    report = run_distill(settings, options, Console(quiet=True))

    assert (report.pairs, report.pairs_scored_now) == (32, 32)
    target, before, after = probe_scores(settings, options, report.student_dir)
    per_list = PROBE_DOCUMENTS
    assert margin_error(after, target, per_list) < margin_error(before, target, per_list)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"loss": "margin-mse", "depth": 1}, "needs --depth 2"),
        ({"loss": "margin-mse", "student": "late-interaction"}, "trains a cross-encoder"),
    ],
)
def test_a_loss_that_cannot_train_is_refused_before_any_work(
    beir_sample: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    settings = Settings(lancedb_uri=str(tmp_path / "db"))
    options = DistillOptions(beir_sample, tmp_path / "student", **change)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=message):
        run_distill(settings, options, Console(quiet=True))
    assert not (tmp_path / "db").exists(), "nothing was indexed"
