"""The gateway's mapping without a server: score transforms, rankstream errors to HTTP
status and each API's body, and the filter grammar requests are checked against."""

from __future__ import annotations

import math

import pytest

from rankstream.errors import (
    ErrorCode,
    ExpiredError,
    InvalidRequestError,
    QueryFailedError,
    QueryTimeoutError,
    RankstreamError,
    RequestTooLargeError,
    UnauthorizedError,
    UnavailableError,
)
from rankstream.wire.filters import FilterError, parse_filter
from rankstream.workers.gateway.errors import (
    Api,
    Problem,
    api_for_path,
    error_body,
    error_response,
    problem_for,
)
from rankstream.workers.gateway.service import sigmoid


@pytest.mark.parametrize("logit", [-800.0, -9.8, 0.0, 6.0, 800.0])
def test_sigmoid_is_stable_and_in_the_unit_interval(logit: float) -> None:
    value = sigmoid(logit)
    assert 0.0 <= value <= 1.0
    if abs(logit) < 50:
        assert value == pytest.approx(1 / (1 + math.exp(-logit)))


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (QueryFailedError(ErrorCode.INVALID_REQUEST, "bad"), 422, "invalid_request"),
        (QueryFailedError(ErrorCode.OVERLOADED, "busy"), 429, "overloaded"),
        (QueryFailedError(ErrorCode.EXPIRED, "late"), 504, "expired"),
        (QueryFailedError(ErrorCode.MODEL_ERROR, "nan"), 500, "model_error"),
        (QueryTimeoutError("no answer"), 504, "expired"),
        (UnavailableError("cannot reach NATS"), 503, "unavailable"),
        (RankstreamError("a bug"), 500, "internal"),
        (UnauthorizedError("no token"), 401, "unauthorized"),
        (ExpiredError("degraded"), 504, "expired"),
        (InvalidRequestError("query too long"), 422, "invalid_request"),
        (RequestTooLargeError("over max_payload"), 413, "invalid_request"),
        (ValueError("bug"), 500, "internal"),
    ],
)
def test_errors_map_to_status_and_code(error: Exception, status: int, code: str) -> None:
    problem = problem_for(error)
    assert (problem.status, problem.code) == (status, code)


def test_each_api_gets_its_own_error_shape() -> None:
    problem = Problem(413, "invalid_request", "too many")
    assert set(error_body(Api.COHERE, problem)) == {"id", "message", "code"}
    assert error_body(Api.OPENAI, problem)["error"]["type"] == "invalid_request_error"
    assert error_body(Api.TEI, problem) == {
        "error": "too many", "error_type": "validation", "code": "invalid_request"
    }  # fmt: skip
    assert error_body(Api.RANKSTREAM, problem)["error"]["code"] == "invalid_request"
    paths = ("/v2/rerank", "/v1/rerank", "/rerank", "/score", "/v1/score", "/v1/search")
    assert [api_for_path(p) for p in paths] == [
        Api.COHERE, Api.OPENAI, Api.TEI, Api.OPENAI, Api.OPENAI, Api.RANKSTREAM
    ]  # fmt: skip
    # Cohere's SDK posts its v1 rerank to /v1/rerank: its errors come in Cohere's shape.
    assert api_for_path("/v1/rerank", {b"x-fern-sdk-name": b"cohere"}) == Api.COHERE


def test_an_overloaded_answer_says_when_to_retry() -> None:
    """429 carries Retry-After: how much sooner the work ahead must clear for the request to
    make its deadline, rounded up; else 1 s."""
    predicted = problem_for(
        QueryFailedError(
            ErrorCode.OVERLOADED,
            "900 pairs queued ahead: about 33.9 s to score, 30.7 s left before the deadline",
        )
    )
    bare = problem_for(QueryFailedError(ErrorCode.OVERLOADED, "busy"))
    assert (predicted.retry_after_s, bare.retry_after_s) == (4, 1)
    for api in Api:
        response = error_response(api, predicted)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "4"
    assert "retry-after" not in error_response(Api.COHERE, problem_for(ExpiredError("x"))).headers


def test_a_message_never_repeats_its_code() -> None:
    doubled = QueryFailedError(ErrorCode.INVALID_REQUEST, "invalid_request: invalid_request: no")
    assert problem_for(doubled).message == "no"


def test_filters_are_re_rendered_with_quoted_columns() -> None:
    parsed = parse_filter("topic = 'it''s' and (year >= 2020 or not flag is null) AND x IN (1, 2)")
    assert parsed.sql == (
        "`topic` = 'it''s' AND (`year` >= 2020 OR NOT `flag` IS NULL) AND `x` IN (1, 2)"
    )
    assert parsed.columns == {"topic", "year", "flag", "x"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1=1; DROP TABLE x",
        "a = b",
        "f(x) = 1",
        "a = 'x' --",
        "a ==",
        "(" * 20 + "a = 1" + ")" * 20,
        "year = \u0663",  # an Arabic-Indic three: numbers are ASCII digits only
        "year IN (1, \u0968\u0966)",  # Devanagari twenty
    ],
)
def test_anything_outside_the_grammar_is_refused(text: str) -> None:
    with pytest.raises(FilterError):
        parse_filter(text)


@pytest.mark.parametrize(
    "text", ["year >= 2020", "topic = 'energy' AND NOT (year IN (1, 2) OR title IS NULL)"]
)
def test_a_rendered_filter_parses_to_itself(text: str) -> None:
    rendered = parse_filter(text).sql
    assert parse_filter(rendered).sql == rendered
