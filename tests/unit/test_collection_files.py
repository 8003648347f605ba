"""Reading a collection's queries and judgements: BEIR's layout and the variants collections
come in, and a clear error (file and line) for a file that cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.evaluation import read_qrels, read_queries


def qrels_file(root: Path, text: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "qrels" / "test.tsv").write_text(text)
    return root


def test_beir_qrels_with_their_header_keep_each_grade_as_given(tmp_path: Path) -> None:
    data = qrels_file(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t1\n")

    assert read_qrels(data, "test") == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}


def test_a_headerless_file_and_trec_four_column_rows_read_the_same(tmp_path: Path) -> None:
    beir = qrels_file(tmp_path / "beir", "q1\td1\t2\n\nq2\td3\t1.0\n")
    trec = qrels_file(tmp_path / "trec", "q1 0 d1 2\nq2 0 d3 1\n")

    expected = {"q1": {"d1": 2}, "q2": {"d3": 1}}
    assert read_qrels(beir, "test") == read_qrels(trec, "test") == expected


def test_an_id_with_spaces_survives_in_a_tab_separated_file(tmp_path: Path) -> None:
    data = qrels_file(tmp_path, "query-id\tcorpus-id\tscore\nq 1\tdoc one\t1\n")

    assert read_qrels(data, "test") == {"q 1": {"doc one": 1}}


@pytest.mark.parametrize(
    ("row", "reason"),
    [("q1\td1\thigh\n", "'high' is not an integer"), ("q1\td1\n", "2 columns")],
)
def test_a_row_that_cannot_be_read_is_refused_with_its_line(
    tmp_path: Path, row: str, reason: str
) -> None:
    data = qrels_file(tmp_path, "query-id\tcorpus-id\tscore\nq0\td0\t1\n" + row)

    with pytest.raises(UsageError, match=rf"test.tsv:3: .*{reason}"):
        read_qrels(data, "test")


def test_queries_keep_their_text_and_ignore_other_keys(tmp_path: Path) -> None:
    (tmp_path / "queries.jsonl").write_text(
        '{"_id": 7, "text": "what is a gene?", "metadata": {}}\n\n{"_id": "q2", "text": "x"}\n'
    )

    assert read_queries(tmp_path) == {"7": "what is a gene?", "q2": "x"}


def test_a_query_line_that_is_not_a_query_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2"}\n')

    with pytest.raises(UsageError, match=r"queries.jsonl:2: not a query"):
        read_queries(tmp_path)
