"""One error hierarchy. Each error knows the machine-readable code its requester receives."""

from __future__ import annotations

from shared.messages import ErrorCode


class RankstreamError(Exception):
    """Base of every error rankstream raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL


class InvalidRequestError(RankstreamError):
    """The request can never succeed as sent: fix the request."""

    code = ErrorCode.INVALID_REQUEST


class ExpiredError(RankstreamError):
    """The request's deadline passed before it could be answered."""

    code = ErrorCode.EXPIRED


class ModelError(RankstreamError):
    """A model could not be loaded or returned unusable output (e.g. NaN)."""

    code = ErrorCode.MODEL_ERROR


class StoreError(RankstreamError):
    """The LanceDB table is missing, empty or unreadable: run `rankstream index` first."""

    code = ErrorCode.STORE_ERROR


class QueryTimeoutError(RankstreamError, TimeoutError):
    """The client waited `timeout` for an answer and none came."""

    code = ErrorCode.EXPIRED


class QueryFailedError(RankstreamError):
    """A worker answered the query with an error result; `code` says which."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
