"""One error hierarchy. Each error knows the machine-readable code its requester receives and
the HTTP status the gateway answers it with.

    RankstreamError                 base of every error rankstream raises on purpose (internal)
    ├── InvalidRequestError         invalid_request: the request can never succeed as sent
    │   └── RequestTooLargeError    invalid_request, HTTP 413: too many documents or bytes
    ├── UnauthorizedError           unauthorized: a bearer token is required (gateway)
    ├── ExpiredError                expired: its deadline passed before it was answered
    │   └── DeadlineExceededError   expired: the deadline passed while its pairs were queued
    │                               or scored (the rerank worker may degrade instead)
    ├── OverloadedError             overloaded: shed at once, the queue ahead would miss it
    ├── UnavailableError            unavailable: NATS, a stream or the workers are unreachable
    │   └── StreamConfigError       unavailable: an existing stream cannot serve rankstream
    ├── ModelError                  model_error: a model failed to load or gave NaN
    ├── StoreError                  store_error: the LanceDB table is missing or unreadable
    ├── QueryTimeoutError           expired (client side; also a TimeoutError): no answer in time
    └── QueryFailedError            (client side) a worker answered with an error: `.code`

| code | HTTP | what to do |
|---|---|---|
| `invalid_request` | 422 (413: `RequestTooLargeError`) | fix the request; the message says what |
| `unauthorized` | 401 | send `Authorization: Bearer <token>` |
| `overloaded` | 429 | retry with backoff, or send a longer timeout |
| `unavailable` | 503 | start the workers / NATS, or fix the stream the message names |
| `expired` | 504 | retry with a longer timeout or less work (depth, documents) |
| `model_error`, `store_error`, `internal` | 500 | look at the worker's log |

Workers turn these into replies and acknowledgements in one place
(`rankstream.workers.delivery`); a client sees `QueryFailedError` with the code it was sent;
the gateway answers each with `http_status` in its API's own error shape.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The machine-readable code of every error a requester can receive."""

    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    EXPIRED = "expired"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    MODEL_ERROR = "model_error"
    STORE_ERROR = "store_error"
    INTERNAL = "internal"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.EXPIRED: 504,
    ErrorCode.MODEL_ERROR: 500,
    ErrorCode.STORE_ERROR: 500,
    ErrorCode.INTERNAL: 500,
}


class RankstreamError(Exception):
    """Base of every error rankstream raises on purpose; raised bare, an internal error."""

    code: ErrorCode = ErrorCode.INTERNAL

    @property
    def http_status(self) -> int:
        """The status the gateway answers this error with."""
        return HTTP_STATUS[self.code]


class InvalidRequestError(RankstreamError):
    """The request can never succeed as sent: fix the request."""

    code = ErrorCode.INVALID_REQUEST


class RequestTooLargeError(InvalidRequestError):
    """More documents, pairs or bytes than a request may carry: send fewer, or raise the limit
    the message names."""

    @property
    def http_status(self) -> int:
        return 413


class UnauthorizedError(RankstreamError):
    """A bearer token is required and was missing or wrong: send `Authorization: Bearer`."""

    code = ErrorCode.UNAUTHORIZED


class ExpiredError(RankstreamError):
    """The request's deadline passed before it could be answered: retry with a longer
    timeout, or a smaller depth."""

    code = ErrorCode.EXPIRED


class DeadlineExceededError(ExpiredError):
    """The deadline passed while a request's pairs waited for admission, were queued or
    scored. The rerank worker answers with the retrieval order (`degraded`) or an `expired`
    error, as `on_deadline` says."""


class OverloadedError(RankstreamError):
    """The work queued ahead would not be done before the request's deadline, so it was
    refused at once: retry later (with backoff), or send a longer timeout."""

    code = ErrorCode.OVERLOADED


class UnavailableError(RankstreamError):
    """NATS, a stream or the workers cannot be reached: start them, or retry later."""

    code = ErrorCode.UNAVAILABLE


class StreamConfigError(UnavailableError):
    """An existing stream cannot serve rankstream as configured (its subjects or retention):
    fix or delete the stream, or use another RANKSTREAM_SUBJECT_PREFIX."""


class ModelError(RankstreamError):
    """A model could not be loaded or returned unusable output (e.g. NaN)."""

    code = ErrorCode.MODEL_ERROR


class StoreError(RankstreamError):
    """The LanceDB table is missing, empty or unreadable: run `rankstream index` first."""

    code = ErrorCode.STORE_ERROR


class QueryTimeoutError(ExpiredError, TimeoutError):
    """The client waited `timeout` for an answer and none came: are the workers running?"""


class QueryFailedError(RankstreamError):
    """A worker answered the query with an error result; `code` says which, `worker` where.

    Args:
        code: the machine-readable error code the worker sent.
        message: the worker's explanation, for people.
        worker: the worker that failed (`retrieval`, `rerank`), when it said.
    """

    def __init__(self, code: ErrorCode, message: str, worker: str = "") -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.worker = worker
