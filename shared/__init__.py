"""rankstream: two-stage search over NATS. Retrieve with a bi-encoder and LanceDB, rerank
with a cross-encoder whose pairs are micro-batched across concurrent requests.

The public API is what this module exports::

    from rankstream import RankstreamClient, Settings

    async with RankstreamClient(Settings()) as client:
        result = await client.query("why do planes leave contrails?", top_k=5, depth=20)

Wire schemas (`QueryRequest`, `RankedResult`, ...) are the messages on NATS; errors form one
tree under `RankstreamError` (see `rankstream.errors`). The worker processes and the tools
live in `rankstream.workers`, which this library never imports.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from rankstream.config import Settings
from rankstream.errors import (
    DeadlineExceededError,
    ErrorCode,
    ExpiredError,
    InvalidRequestError,
    ModelError,
    OverloadedError,
    QueryFailedError,
    QueryTimeoutError,
    RankstreamError,
    RequestTooLargeError,
    StoreError,
    StreamConfigError,
    UnauthorizedError,
    UnavailableError,
)
from rankstream.wire.contract import (
    ErrorResult,
    QueryRequest,
    RankedDoc,
    RankedResult,
    RerankDocument,
    RerankRequest,
    RerankStage,
    StageReport,
    StageTimings,
)
from rankstream.wire.pipeline import PipelineSpec

if TYPE_CHECKING:
    from rankstream.client import RankstreamClient

try:
    __version__ = version("rankstream")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"

__all__ = [
    "DeadlineExceededError",
    "ErrorCode",
    "ErrorResult",
    "ExpiredError",
    "InvalidRequestError",
    "ModelError",
    "OverloadedError",
    "PipelineSpec",
    "QueryFailedError",
    "QueryRequest",
    "QueryTimeoutError",
    "RankedDoc",
    "RankedResult",
    "RankstreamClient",
    "RankstreamError",
    "RequestTooLargeError",
    "RerankDocument",
    "RerankRequest",
    "RerankStage",
    "Settings",
    "StageReport",
    "StageTimings",
    "StoreError",
    "StreamConfigError",
    "UnauthorizedError",
    "UnavailableError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """`RankstreamClient` is imported on first use: it brings in nats-py, which the library's
    other modules (scheduling, models) must not load by being imported."""
    if name == "RankstreamClient":
        from rankstream.client import RankstreamClient

        return RankstreamClient
    raise AttributeError(f"module 'rankstream' has no attribute {name!r}")
