"""One error hierarchy. Each error knows the machine-readable code its requester receives.

    RankstreamError                 base of every error rankstream raises on purpose
    ├── InvalidRequestError         invalid_request: the request can never succeed as sent
    │   └── MessageTooLargeError    (client side) its message is over what NATS carries
    ├── ExpiredError                expired: its deadline passed before it was answered
    ├── OverloadedError             overloaded: shed at once, the queue ahead would miss it
    ├── ModelError                  model_error: a model failed to load or gave NaN
    ├── StoreError                  store_error: the LanceDB table is missing or unreadable
    ├── QueryTimeoutError           (client side; also a TimeoutError) no answer in time
    └── QueryFailedError            (client side) a worker answered with an error: `.code`

Workers turn these into replies and acknowledgements in one place
(`rankstream.workers.delivery`); a client sees `QueryFailedError` with the code it was sent.
"""

from __future__ import annotations

from rankstream.wire.messages import ErrorCode


class RankstreamError(Exception):
    """Base of every error rankstream raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL


class InvalidRequestError(RankstreamError):
    """The request can never succeed as sent: fix the request."""

    code = ErrorCode.INVALID_REQUEST


class MessageTooLargeError(InvalidRequestError):
    """The request's message is larger than the NATS server carries (its `max_payload`) or
    the workers take (`max_message_bytes`): send fewer or shorter documents."""


class ExpiredError(RankstreamError):
    """The request's deadline passed before it could be answered: retry with a longer
    timeout, or a smaller depth."""

    code = ErrorCode.EXPIRED


class OverloadedError(RankstreamError):
    """The work queued ahead would not be done before the request's deadline, so it was
    refused at once: retry later (with backoff), or send a longer timeout."""

    code = ErrorCode.OVERLOADED


class ModelError(RankstreamError):
    """A model could not be loaded or returned unusable output (e.g. NaN)."""

    code = ErrorCode.MODEL_ERROR


class StoreError(RankstreamError):
    """The LanceDB table is missing, empty or unreadable: run `rankstream index` first."""

    code = ErrorCode.STORE_ERROR


class QueryTimeoutError(RankstreamError, TimeoutError):
    """The client waited `timeout` for an answer and none came: are the workers running?"""

    code = ErrorCode.EXPIRED


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
        self.worker = worker
