"""rankstream's errors as each API's error body and HTTP status.

| rankstream code | HTTP | meaning |
|---|---|---|
| `invalid_request` | 422 (413: too many documents, too large a body or message) | fix it |
| `unauthorized` | 401 | a bearer token is required and was missing or wrong |
| `overloaded` | 429 (with `Retry-After`) | shed: the work queued ahead would miss the deadline |
| `unavailable` | 503 | NATS or the workers are not reachable |
| `expired` | 504 | no answer, or no scores (a degraded answer), before the deadline |
| `model_error`, `store_error`, `internal` | 500 | a worker failed |

Every body carries the code as `code` beside the shape the API's own clients parse. The
models below are those bodies, as the OpenAPI document declares them.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

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
# What an `overloaded` answer says about the work ahead ("about 33.9 s to score, 28.8 s left
# before the deadline"): Retry-After is how much sooner the backlog must clear (5.1 s: 6).
_WAIT = re.compile(r"about ([0-9]+(?:\.[0-9]+)?) s to score(?:, ([0-9]+(?:\.[0-9]+)?) s left)?")
DEFAULT_RETRY_AFTER_S = 1
# The header the official Cohere SDK (Fern-generated) sends: `/v1/rerank` answers it in
# Cohere's v1 shape.
SDK_HEADER = b"x-fern-sdk-name"


class Api(StrEnum):
    """Whose error shape a route answers with."""

    COHERE = "cohere"  # {"id", "message", "code"}
    OPENAI = "openai"  # {"error": {"message", "type", "param", "code"}} (Jina, vLLM)
    TEI = "tei"  # {"error", "error_type", "code"}
    RANKSTREAM = "rankstream"  # {"error": {"code", "message"}}


@dataclass(frozen=True)
class Problem:
    """An answer that is not a result: its HTTP status, rankstream code and message (for
    people: what went wrong and what to change); `retry_after_s` for a 429."""

    status: int
    code: str
    message: str
    retry_after_s: int | None = None


def api_for_path(path: str, headers: Mapping[bytes, bytes] | None = None) -> Api:
    """The API a request belongs to: by its path, and for `/v1/rerank` by the SDK that sent
    it (the Cohere SDK's v1 client posts there too)."""
    if path.startswith("/v2/rerank"):
        return Api.COHERE
    if path.startswith("/v1/rerank"):
        sdk = (headers or {}).get(SDK_HEADER, b"")
        return Api.COHERE if sdk.lower().startswith(b"cohere") else Api.OPENAI
    if path in ("/score", "/v1/score"):
        return Api.OPENAI
    if path.startswith("/rerank"):
        return Api.TEI
    return Api.RANKSTREAM


def api_for_scope(scope: Mapping[str, Any]) -> Api:
    """`api_for_path` of an ASGI scope (path and headers)."""
    return api_for_path(str(scope.get("path", "")), dict(scope.get("headers") or []))


def problem_for(error: Exception) -> Problem:
    """The HTTP answer to an error raised while a request was handled: a RankstreamError's
    own status and code (`rankstream.errors.HTTP_STATUS`), anything else 500 `internal`."""
    if isinstance(error, QueryFailedError):
        return _problem(error.http_status, error.code.value, error.message)
    if isinstance(error, RankstreamError):
        return _problem(error.http_status, error.code.value, str(error))
    return Problem(500, ErrorCode.INTERNAL.value, f"internal error: {type(error).__name__}")


def _problem(status: int, code: str, message: str) -> Problem:
    message = strip_code(message, code)
    retry = None
    if status == 429:
        retry = DEFAULT_RETRY_AFTER_S
        wait = _WAIT.search(message)
        if wait is not None:
            late_s = float(wait[1]) - float(wait[2] or 0.0)
            retry = max(DEFAULT_RETRY_AFTER_S, math.ceil(late_s))
    return Problem(status, code, message, retry)


def strip_code(message: str, code: str) -> str:
    """`message` without the code it may lead with, once or more (`invalid_request:
    invalid_request: ...`): the body carries the code in its own field."""
    prefix = f"{code}: "
    while message.startswith(prefix):
        message = message[len(prefix) :]
    return message


def error_body(api: Api, problem: Problem) -> Any:
    """The JSON body `api`'s clients expect for `problem`."""
    if api == Api.COHERE:
        return {"id": uuid.uuid4().hex, "message": problem.message, "code": problem.code}
    if api == Api.OPENAI:
        kind = _OPENAI_TYPE.get(problem.status, "server_error")
        return {
            "error": {"message": problem.message, "type": kind, "param": None, "code": problem.code}
        }
    if api == Api.TEI:
        kind = _TEI_TYPE.get(problem.status, "backend")
        return {"error": problem.message, "error_type": kind, "code": problem.code}
    return {"error": {"code": problem.code, "message": problem.message}}


def error_response(api: Api, problem: Problem) -> JSONResponse:
    headers = {}
    if problem.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if problem.status == 429:
        headers["Retry-After"] = str(problem.retry_after_s or DEFAULT_RETRY_AFTER_S)
    return JSONResponse(
        error_body(api, problem), status_code=problem.status, headers=headers or None
    )


# --- the bodies, for the OpenAPI document ---
CODE_DESCRIPTION = (
    "rankstream's machine-readable code: invalid_request, unauthorized, overloaded, "
    "unavailable, expired, model_error, store_error or internal."
)


class CohereErrorBody(BaseModel):
    """Cohere's error body."""

    id: str
    message: str = Field(description="What went wrong, and what to change.")
    code: str = Field(description=CODE_DESCRIPTION)


class OpenAiErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, and what to change.")
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error.")
    param: str | None = None
    code: str = Field(description=CODE_DESCRIPTION)


class OpenAiErrorBody(BaseModel):
    """The OpenAI-style error body Jina and vLLM send."""

    error: OpenAiErrorDetail


class TeiErrorBody(BaseModel):
    """text-embeddings-inference's error body."""

    error: str = Field(description="What went wrong, and what to change.")
    error_type: str = Field(description="TEI's kind: validation, overloaded, unhealthy, ...")
    code: str = Field(description=CODE_DESCRIPTION)


class RankstreamErrorDetail(BaseModel):
    code: str = Field(description=CODE_DESCRIPTION)
    message: str = Field(description="What went wrong, and what to change.")


class RankstreamErrorBody(BaseModel):
    """rankstream's own error body (`/v1/search`)."""

    error: RankstreamErrorDetail


ERROR_MODELS: dict[Api, type[BaseModel]] = {
    Api.COHERE: CohereErrorBody,
    Api.OPENAI: OpenAiErrorBody,
    Api.TEI: TeiErrorBody,
    Api.RANKSTREAM: RankstreamErrorBody,
}
