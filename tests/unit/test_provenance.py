"""The training record a distilled model carries, read back by `rankstream tune`."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.provenance import TRAINING_FILE, record_training, trained_texts


def test_a_students_int8_folder_finds_the_record_written_beside_the_student(
    tmp_path: Path,
) -> None:
    student = tmp_path / "student"
    (student / "onnx-int8").mkdir(parents=True)
    record_training(student, tmp_path / "scifact", "train", {"1": "what is a gene?"})

    assert trained_texts(str(student)) == {"what is a gene?"}
    assert trained_texts(str(student / "onnx-int8")) == {"what is a gene?"}


def test_a_model_without_a_record_was_trained_on_nothing_here(tmp_path: Path) -> None:
    assert trained_texts(str(tmp_path)) == set()
    assert trained_texts("packaged:ms-marco-MiniLM-L-12-v2-int8") == set()


def test_a_damaged_record_is_refused_with_its_path(tmp_path: Path) -> None:
    (tmp_path / TRAINING_FILE).write_text('{"split": "train"}')
    with pytest.raises(UsageError, match=TRAINING_FILE):
        trained_texts(str(tmp_path))
