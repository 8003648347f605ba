"""`rankstream distill` on a tiny split: real teacher (the packaged cross-encoder), real
retrieval over a real LanceDB table, one training step of a real student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from rankstream.config import Settings
from rankstream.models.registry import load_cross_encoder
from rankstream.retrieval.corpus import read_documents, sample_corpus_path, sample_queries
from rankstream.workers.tools.distill import (
    DistillOptions,
    judged_columns,
    judged_lists,
    run_distill,
    student_start,
)
from rankstream.workers.tools.distill_loss import label_term, teacher_term
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
        ({"labels": True, "student": "late-interaction"}, "--labels trains a cross-encoder"),
        ({"labels": True, "depth": 1}, "--labels needs --depth 2"),
        ({"labels": True, "label_weight": -1.0}, "--label-weight must be 0 or more"),
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


# --- Domain adaptation: `labels` ---------------------------------------------------------

PLANTED_QUERY, PLANTED_DOCUMENT = "q1", "composting"  # DDoS, judged relevant here on purpose


@pytest.fixture(scope="module")
def planted_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus and queries with their own judgements, plus one planted positive:
    a composting document judged relevant to the DDoS query, which the teacher scores far
    below that query's other candidates and dense retrieval does not find."""
    folder = tmp_path_factory.mktemp("planted")
    (folder / "corpus.jsonl").write_bytes(sample_corpus_path().read_bytes())
    queries = sample_queries()
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q.query_id, "text": q.text}) + "\n" for q in queries)
    )
    (folder / "qrels").mkdir()
    judged = [(q.query_id, doc) for q in queries for doc in q.relevant]
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{query}\t{doc}\t1\n" for query, doc in judged)
        + f"{PLANTED_QUERY}\t{PLANTED_DOCUMENT}\t1\n"
    )
    return folder


def test_judged_lists_put_every_positive_before_the_hard_negatives(tmp_path: Path) -> None:
    corpus = [{"_id": "d9", "title": "Nine", "text": "missed by retrieval"}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    hits = [("d1", "one"), ("d2", "two"), ("d3", "three"), ("d4", "four"), ("d5", "five")]
    lists = judged_lists(
        queries={"a": "query a", "b": "query b", "c": "query c"},
        candidates={"a": hits, "b": hits, "c": hits[:2]},
        # d3 is judged non-relevant (grade 0): a negative like any other candidate.
        qrels={"a": {"d2": 1, "d9": 2, "d3": 0}, "b": {"d3": 0}, "c": {"d1": 1, "d2": 1}},
        data_dir=tmp_path,
        depth=4,
    )
    assert len(lists) == 1, "b has no positive, c no negative: both left out"
    (only,) = lists
    assert only.documents == ["two", "Nine missed by retrieval", "one", "three"]
    assert only.relevant == [True, True, False, False]
    assert only.added == 1

    columns = judged_columns(lists, [5.0, -3.0, 7.0, 1.0])
    assert columns["query"] == ["query a"]
    assert [columns[f"document_{i}"][0] for i in range(4)] == only.documents
    assert columns["label"] == [[[5.0, -3.0, 7.0, 1.0], [1.0, 1.0, 0.0, 0.0]]]


def test_the_label_term_rewards_positives_and_the_teacher_term_ignores_a_lists_offset() -> None:
    relevant = torch.tensor([[True, False, False]])
    low, high = torch.tensor([[-2.0, 1.0, 0.0]]), torch.tensor([[4.0, 1.0, 0.0]])
    assert float(label_term(high, relevant)) < float(label_term(low, relevant))
    # One positive against two negatives: softplus(logsumexp(negatives) - positive).
    expected = np.log1p(np.exp(np.logaddexp(1.0, 0.0) - 4.0))
    assert float(label_term(high, relevant)) == pytest.approx(expected, rel=1e-5)
    teacher = torch.tensor([[3.0, 0.0, -1.0]])
    assert float(teacher_term(teacher + 5.0, teacher, "margin-mse")) == pytest.approx(0.0)
    assert float(teacher_term(teacher + 5.0, teacher, "mse")) == pytest.approx(25.0)


def test_labels_adapt_the_full_teacher_toward_a_judged_positive_it_scores_low(
    planted_beir: Path, tmp_path: Path, settings: Settings
) -> None:
    """Started from the teacher with all 12 layers, the teacher term has almost nothing to
    teach: the planted positive moves above its hard negatives through the label term. (Seen
    here, the lead of the planted positive over the best hard negative, -17.0 before: -17.6
    after the same run with `label_weight` 0, i.e. training noise; -16.3 at 1; -12.0 at 5.)"""
    options = DistillOptions(
        planted_beir, tmp_path / "adapted", limit=2, depth=8, mode="dense", layers=12,
        epochs=3, batch_size=8, learning_rate=1e-4, max_length=128,
        teacher_cache=tmp_path / "teacher.sqlite", labels=True, label_weight=5.0,
    )  # fmt: skip
    report = run_distill(settings, options, Console(quiet=True))

    assert report.layers_kept == list(range(12))
    assert (report.queries, report.pairs) == (2, 16)
    assert (report.positives, report.positives_added) == (5, 1), "4 sample ones + the planted"
    query = next(q.text for q in sample_queries() if q.query_id == PLANTED_QUERY)
    texts = {doc.doc_id: doc.content for doc in read_documents(sample_corpus_path())}
    others = ["ddos-mention-1", "ddos-mention-2", "ddos-mention-3"]  # hard negatives
    probe = [(query, texts[doc]) for doc in [PLANTED_DOCUMENT, *others]]

    unadapted, _ = student_start(settings, options)  # the teacher's fp32 checkpoint
    adapted = load_cross_encoder(settings, str(report.student_dir))
    before = [float(s) for s in unadapted.predict(probe, activation_fn=None)]
    after = adapted.score(adapted.tokenizer.encode(probe))
    assert before[0] < min(before[1:]) - 3, "the teacher puts the planted positive far below"
    lead_before, lead_after = before[0] - max(before[1:]), after[0] - max(after[1:])
    assert lead_after > lead_before + 2.5, (before, after)

    served = load_cross_encoder(settings, str(report.onnx_dir))  # its int8 ONNX copy
    int8 = served.score(served.tokenizer.encode(probe))
    assert np.corrcoef(int8, after)[0, 1] > 0.95, "the int8 export scores as the student does"
