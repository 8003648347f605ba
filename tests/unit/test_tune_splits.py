"""Which judged queries `rankstream tune` fits on and which it only measures, for the split
layouts BEIR collections come in (train/dev/test, dev/test, test only, train/dev)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.tune import TuneOptions, make_folds, tune_splits

QUERIES = {f"q{i}": f"question {i}" for i in range(12)}


def collection(root: Path, **splits: list[str]) -> Path:
    """qrels/<split>.tsv for each split given, judging each of its queries once."""
    (root / "qrels").mkdir(parents=True)
    for split, query_ids in splits.items():
        rows = "".join(f"{q}\td-{q}-{split}\t1\n" for q in query_ids)
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


def options(data: Path, **fields: object) -> TuneOptions:
    return TuneOptions(data_dir=data, out=data / "out", folds=3, **fields)  # type: ignore[arg-type]


def test_train_is_fitted_on_and_test_measured_even_when_there_is_a_dev_split(
    tmp_path: Path,
) -> None:
    data = collection(tmp_path, train=["q0", "q1"], dev=["q2"], test=["q3", "q4"])

    assert tune_splits(options(data)) == ("train", "test")
    folds, _ = make_folds(options(data), QUERIES)
    assert folds.pairs == [(["q0", "q1"], ["q3", "q4"])]
    assert folds.how == "fitted on 2 train queries, measured on 2 test queries"


def test_without_train_the_dev_split_is_fitted_on(tmp_path: Path) -> None:
    data = collection(tmp_path, dev=["q0", "q1", "q2"], test=["q3", "q4"])

    folds, _ = make_folds(options(data), QUERIES)

    assert folds.pairs == [(["q0", "q1", "q2"], ["q3", "q4"])]
    assert folds.how == "fitted on 3 dev queries, measured on 2 test queries"


def test_without_test_the_dev_split_is_held_out(tmp_path: Path) -> None:
    data = collection(tmp_path, train=["q0", "q1"], dev=["q2", "q3"])

    assert tune_splits(options(data)) == ("train", "dev")


def test_a_test_split_alone_is_cross_validated_each_query_held_out_once(tmp_path: Path) -> None:
    judged = [f"q{i}" for i in range(9)]
    data = collection(tmp_path, test=judged)

    folds, _ = make_folds(options(data), QUERIES)

    assert tune_splits(options(data)) == (None, "test")
    held_out = [q for _, part in folds.pairs for q in part]
    assert sorted(held_out) == judged
    assert all(not set(tuning) & set(part) for tuning, part in folds.pairs)
    assert folds.how.startswith("3-fold cross-validation over 9 test queries")


def test_a_query_judged_in_both_splits_is_tuned_on_with_its_tuning_judgements_only(
    tmp_path: Path,
) -> None:
    data = collection(tmp_path, train=["q0", "q1"], test=["q1", "q2"])

    folds, qrels = make_folds(options(data), QUERIES)

    assert folds.pairs == [(["q0", "q1"], ["q2"])]
    assert qrels["q1"] == {"d-q1-train": 1}


def test_named_splits_are_used_as_named(tmp_path: Path) -> None:
    data = collection(tmp_path, train=["q0"], validation=["q1", "q2"], test=["q3"])

    asked = options(data, tuning_split="validation", held_out_split="test")

    assert tune_splits(asked) == ("validation", "test")


def test_fitting_and_measuring_on_one_split_is_refused(tmp_path: Path) -> None:
    data = collection(tmp_path, train=["q0"], test=["q1"])

    with pytest.raises(UsageError, match="both 'test'"):
        tune_splits(options(data, tuning_split="test"))


def test_a_collection_with_nothing_to_measure_on_says_how_to_name_a_split(
    tmp_path: Path,
) -> None:
    data = collection(tmp_path, train=["q0"])

    with pytest.raises(UsageError, match="--held-out-split"):
        tune_splits(options(data))


def test_a_named_split_that_does_not_exist_is_refused_with_its_path(tmp_path: Path) -> None:
    data = collection(tmp_path, test=["q0", "q1", "q2"])

    with pytest.raises(UsageError, match=r"has no qrels/validation.tsv"):
        make_folds(options(data, tuning_split="validation"), QUERIES)
