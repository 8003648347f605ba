"""rankstream's errors as each API's error body and HTTP status.

| rankstream code | HTTP | meaning |
|---|---|---|
| `invalid_request` | 422 (413: too many documents, too large a body or message) | fix it |
| `unauthorized` | 401 | a bearer token is required and was missing or wrong |
| `overloaded` | 429 | shed: the work queued ahead would miss the deadline; retry later |
| `unavailable` | 503 | NATS or the workers are not reachable |
| `expired` | 504 | no answer, or no scores (a degraded answer), before the deadline |
| `model_error`, `store_error`, `internal` | 500 | a worker failed |

Every body carries the code as `code` beside the shape the API's own clients parse.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi.responses import JSONResponse

from rankstream.errors import ErrorCode, QueryFailedError, RankstreamError

# OpenAI-style `type` (vLLM's error body) and TEI's `error_type`, by HTTP status.
_OPENAI_TYPE = {
    401: "authentication_error", 413: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error", 503: "service_unavailable", 504: "timeout",
}  # fmt: skip
_TEI_TYPE = {
    401: "unauthorized", 413: "validation", 422: "validation", 429: "overloaded",
    503: "unhealthy", 504: "backend",
}  # fmt: skip


class Api(StrEnum):
    """Whose error shape a route answers with."""

    COHERE = "cohere"  # {"id", "message", "code"}
    JINA = "jina"  # {"error": {"message", "type", "param", "code"}} (vLLM, OpenAI style)
    TEI = "tei"  # {"error", "error_type", "code"}
    RANKSTREAM = "rankstream"  # {"error": {"code", "message"}}


@dataclass(frozen=True)
class Problem:
    """An answer that is not a result: its HTTP status, rankstream code and message (for
    people: what went wrong and what to change)."""

    status: int
    code: str
    message: str


def api_for_path(path: str) -> Api:
    """The API a request path belongs to."""
    if path.startswith("/v2/rerank"):
        return Api.COHERE
    if path.startswith("/v1/rerank"):
        return Api.JINA
    if path.startswith("/rerank"):
        return Api.TEI
    return Api.RANKSTREAM


def problem_for(error: Exception) -> Problem:
    """The HTTP answer to an error raised while a request was handled: a RankstreamError's
    own status and code (`rankstream.errors.HTTP_STATUS`), anything else 500 `internal`."""
    if isinstance(error, QueryFailedError):
        return Problem(error.http_status, error.code.value, error.message)
    if isinstance(error, RankstreamError):
        return Problem(error.http_status, error.code.value, str(error))
    return Problem(500, ErrorCode.INTERNAL.value, f"internal error: {type(error).__name__}")


def error_body(api: Api, problem: Problem) -> Any:
    """The JSON body `api`'s clients expect for `problem`."""
    if api == Api.COHERE:
        return {"id": uuid.uuid4().hex, "message": problem.message, "code": problem.code}
    if api == Api.JINA:
        kind = _OPENAI_TYPE.get(problem.status, "server_error")
        return {
            "error": {"message": problem.message, "type": kind, "param": None, "code": problem.code}
        }
    if api == Api.TEI:
        kind = _TEI_TYPE.get(problem.status, "backend")
        return {"error": problem.message, "error_type": kind, "code": problem.code}
    return {"error": {"code": problem.code, "message": problem.message}}


def error_response(api: Api, problem: Problem) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if problem.status == 401 else None
    return JSONResponse(error_body(api, problem), status_code=problem.status, headers=headers)
