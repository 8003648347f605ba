"""What `rankstream query` prints under the ranked documents: how the answer was made."""

from __future__ import annotations

from rankstream.wire.contract import RankedResult, RetrievalReport, StageTimings
from rankstream.workers.cli import _answer_lines


def answer(**fields: object) -> RankedResult:
    base: dict[str, object] = {
        "request_id": "r1",
        "query": "what is a gene?",
        "results": [],
        "timings_ms": StageTimings(total=12.0, search=4.0),
        "batch_pairs": 0,
        "batch_requests": 0,
        "reranked": 0,
        "model_id": "none",
        "embedder_model": "e",
    }
    return RankedResult.model_validate(base | fields)


def test_a_convex_fusion_is_named_with_its_weight_as_the_grammar_writes_it() -> None:
    lines = _answer_lines(answer(retrieval=RetrievalReport(mode="hybrid", fusion_weight=0.35)))

    assert lines[0] == "retrieval: hybrid~0.35; 0 candidates reranked"


def test_an_answer_planned_by_the_served_profile_names_its_digest() -> None:
    lines = _answer_lines(answer(profile="0123456789abcdef"))

    assert lines[1] == "plan: the served profile's (0123456789abcdef)"


def test_an_answer_to_a_named_plan_says_nothing_of_a_profile() -> None:
    lines = _answer_lines(answer(retrieval=RetrievalReport(mode="hybrid")))

    assert lines[0] == "retrieval: hybrid; 0 candidates reranked"
    assert not any(line.startswith("plan:") for line in lines)
