"""The wire contract: what a valid message is, and what is refused."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from rankstream.errors import ErrorCode
from rankstream.wire.contract import (
    REPLY_ADAPTER,
    ErrorResult,
    QueryRequest,
    RankedResult,
    RerankStage,
    StageTimings,
)


def a_request(**overrides: object) -> QueryRequest:
    fields: dict[str, object] = {"query": "why is the sky blue", "reply_to": "rs.results.c1"}
    return QueryRequest.model_validate({**fields, **overrides})


def test_a_request_round_trips_through_json() -> None:
    request = a_request(top_k=3, stages=[{"depth": 50}])
    assert QueryRequest.model_validate_json(request.model_dump_json()) == request


def test_a_request_carries_a_schema_version_and_a_fresh_id() -> None:
    first, second = a_request(), a_request()
    assert json.loads(first.model_dump_json())["schema_version"] == 2
    assert first.request_id != second.request_id


def test_an_unknown_schema_version_is_refused() -> None:
    with pytest.raises(ValidationError, match="schema_version"):
        a_request(schema_version=1)


def test_unknown_fields_of_a_request_are_refused_rather_than_ignored() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        a_request(topk=3)


def test_a_reply_from_a_worker_a_version_ahead_is_read_without_the_fields_it_added() -> None:
    """A rolling upgrade: the workers add fields to their answers before every client
    knows them; the client still reads the answer (it would otherwise wait out its
    timeout), and the version number is still checked."""
    newer = {
        "kind": "result", "request_id": "r1", "query": "q", "timings_ms": {"total": 3.0,
        "rerank_gpu": 1.0}, "batch_pairs": 0, "batch_requests": 0, "reranked": 1,
        "model_id": "m", "embedder_model": "e", "explanation": "added later",
        "results": [{"doc_id": "d1", "text": None, "score": 1.0, "retrieval_rank": 1,
                     "retrieval_score": 0.5, "highlights": [[0, 4]]}],
        "stages": [{"name": "ce@1", "model_id": "m", "candidates": 1, "pairs": 1,
                    "over_budget": 0, "truncated_tokens": 0, "device": "cuda:0"}],
        "retrieval": {"mode": "hybrid", "reranker_hint": 0.1},
    }  # fmt: skip
    error = {"kind": "error", "request_id": "r2", "code": "expired", "message": "late",
             "retry_after_ms": 200}  # fmt: skip

    result = REPLY_ADAPTER.validate_json(json.dumps(newer))
    assert isinstance(result, RankedResult)
    assert [doc.doc_id for doc in result.results] == ["d1"]
    assert result.stages[0].pairs == 1
    assert result.retrieval.mode == "hybrid"
    assert "explanation" not in result.model_dump()
    assert REPLY_ADAPTER.validate_json(json.dumps(error)) == ErrorResult(
        request_id="r2", code=ErrorCode.EXPIRED, message="late"
    )
    with pytest.raises(ValidationError, match="schema_version"):
        REPLY_ADAPTER.validate_json(json.dumps(newer | {"schema_version": 3}))


@pytest.mark.parametrize(
    "bad",
    [
        {"query": ""},
        {"top_k": 0},
        {"stages": [{"depth": 0}]},
        {"timeout_ms": 0},
        {"reply_to": ""},
        {"created_at_ms": float("inf")},
        {"created_at_ms": float("nan")},
        {"created_at_ms": -1.0},
    ],
)
def test_out_of_range_fields_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        a_request(**bad)


def test_a_cascade_has_one_spelling_stages() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        a_request(depth=20)
    with pytest.raises(ValidationError, match="Extra inputs"):
        a_request(max_doc_tokens=64)


def test_a_cascade_never_widens_and_only_its_first_stage_is_auto() -> None:
    with pytest.raises(ValidationError, match="at most as many"):
        a_request(stages=[RerankStage(depth=10), RerankStage(depth=20)])
    with pytest.raises(ValidationError, match="only the first stage"):
        a_request(stages=[RerankStage(depth=10), RerankStage(depth="auto")])


def test_the_deadline_is_creation_time_plus_timeout() -> None:
    request = a_request(created_at_ms=1_000.0, timeout_ms=250)
    assert request.deadline_ms == 1_250.0


def test_a_reply_is_decoded_as_result_or_error_by_its_kind() -> None:
    error = ErrorResult(request_id="r1", code=ErrorCode.EXPIRED, message="too late")
    result = RankedResult(
        request_id="r2", query="q", results=[], timings_ms=StageTimings(total=3.0),
        batch_pairs=0, batch_requests=0, reranked=0, model_id="m", embedder_model="e",
    )  # fmt: skip
    assert REPLY_ADAPTER.validate_json(error.model_dump_json()) == error
    assert REPLY_ADAPTER.validate_json(result.model_dump_json()) == result


def test_timings_serialise_as_stage_name_to_milliseconds() -> None:
    timings = json.loads(StageTimings(embed=1.5, total=9.0).model_dump_json())
    assert set(timings) == {
        "queue_wait", "cache", "embed", "search", "rerank_queue_wait", "batch_wait",
        "inference", "total",
    }  # fmt: skip
    assert timings["embed"] == 1.5
