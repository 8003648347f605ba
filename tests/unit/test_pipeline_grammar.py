"""The pipeline notation `eval --configs` and `query --pipeline` read."""

from __future__ import annotations

import pytest

from rankstream.errors import InvalidRequestError
from rankstream.wire.pipeline import PipelineSpec


@pytest.mark.parametrize(
    "text",
    ["dense", "bm25", "hybrid", "hybrid+ce@10", "dense+ce@20/doc256", "hybrid+ce@auto",
     "hybrid+ce@100/doc64>ce@20", "dense+ce-int8@50>ce-fp32@10/maxp128", "hybrid~0.6",
     "hybrid~0.35+ce@30/best128~0.5>ce@10~1", "bm25+ce@20/best64", "hybrid~0+ce@5~0"],
)  # fmt: skip
def test_a_spec_reads_back_as_itself(text: str) -> None:
    assert PipelineSpec.parse(text).name == text


def test_a_cascade_becomes_the_request_stages() -> None:
    fields = PipelineSpec.parse("hybrid+ce@100/doc64>ce-fp32@20/maxp128").request_fields()

    assert fields["retrieval"] == "hybrid"
    first, second = fields["stages"]
    assert (first.scorer, first.depth, first.max_doc_tokens, first.long_docs) == (
        "ce", 100, 64, "head",
    )  # fmt: skip
    assert (second.scorer, second.depth, second.max_doc_tokens, second.long_docs) == (
        "ce-fp32", 20, 128, "maxp",
    )  # fmt: skip


def test_weights_become_the_fusion_weight_and_each_stages_interpolation() -> None:
    fields = PipelineSpec.parse("hybrid~0.6+ce@30/best128~0.25").request_fields()

    assert fields["fusion_weight"] == 0.6
    (stage,) = fields["stages"]
    assert (stage.max_doc_tokens, stage.long_docs, stage.interpolate) == (128, "best", 0.25)


def test_retrieval_alone_asks_for_no_stage() -> None:
    assert PipelineSpec.parse("bm25").request_fields() == {"retrieval": "bm25", "stages": []}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("sparse", "not a retrieval mode"),
        ("dense+ce", "SCORER@DEPTH"),
        ("dense+ce@0", "at least one"),
        ("dense+ce@10>ce@20", "at most as many"),
        ("dense+ce@10>ce@auto", "only the first stage"),
        ("dense+ce@10/doc", "SCORER@DEPTH"),
        ("dense~0.5", "hybrid lists"),
        ("hybrid~1.5", "less than or equal to 1"),
        ("hybrid~0.12345", "not a retrieval mode"),
        ("hybrid+ce@10~2", "less than or equal to 1"),
        ("hybrid+ce@10~", "SCORER@DEPTH"),
    ],
)
def test_a_bad_spec_is_refused_naming_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(InvalidRequestError, match=complaint):
        PipelineSpec.parse(text)


def test_depths_and_budgets_are_ascii_digits() -> None:
    with pytest.raises(InvalidRequestError):
        PipelineSpec.parse("dense+ce@٣")
