"""Wire schemas: every message that crosses NATS is one of these pydantic models (JSON)."""

from __future__ import annotations

import hashlib
import time
import uuid
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION: Literal[1] = 1
# A subject a reply can be published to: dot-separated non-empty tokens, no whitespace or
# wildcards.
SUBJECT_PATTERN = r"^[^\s.*>]+(\.[^\s.*>]+)*$"


def now_ms() -> float:
    """Wall-clock milliseconds since the epoch: comparable across processes on one host."""
    return time.time() * 1000.0


def dedup_id(request_id: str, stage: str) -> str:
    """The `Nats-Msg-Id` of a request's message at one stage. Hashed: nats-py strips header
    values, so ids differing only in surrounding whitespace would otherwise collide."""
    return f"{hashlib.sha256(request_id.encode('utf-8', 'surrogatepass')).hexdigest()}:{stage}"


class WireModel(BaseModel):
    """Base for all messages: strict about unknown fields, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION


class QueryRequest(WireModel):
    """A user's query, published to the queries subject."""

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    query: str = Field(min_length=1)
    top_k: int = Field(default=10, ge=1, description="How many ranked results to return.")
    depth: int = Field(
        default=20, ge=0, description="Candidates to rerank; 0 returns the retrieval order."
    )
    created_at_ms: float = Field(default_factory=now_ms)
    timeout_ms: int = Field(default=30_000, ge=1, description="Deadline = created_at + timeout.")
    reply_to: str = Field(
        min_length=1,
        max_length=255,
        pattern=SUBJECT_PATTERN,
        description="Subject the result or error is sent to.",
    )

    @property
    def deadline_ms(self) -> float:
        return self.created_at_ms + self.timeout_ms

    @property
    def candidate_count(self) -> int:
        """How many candidates retrieval must return: enough to rerank and to answer."""
        return max(self.top_k, self.depth)


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_id: str
    text: str
    retrieval_score: float
    retrieval_rank: int = Field(ge=1)


class StageTimings(BaseModel):
    """Milliseconds per stage. Stages are disjoint intervals, so their sum is <= total_ms."""

    model_config = ConfigDict(extra="forbid")

    queue_wait: float = 0.0
    embed: float = 0.0
    search: float = 0.0
    rerank_queue_wait: float = 0.0
    batch_wait: float = 0.0
    inference: float = 0.0
    total: float = 0.0


class CandidateSet(WireModel):
    """Retrieval's output, the rerank worker's input."""

    request: QueryRequest
    candidates: list[Candidate]
    timings_ms: StageTimings
    published_at_ms: float = Field(default_factory=now_ms)
    embedder_model: str


class RankedDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_id: str
    text: str
    score: float = Field(description="Rerank score (higher = more relevant) or retrieval score.")
    retrieval_rank: int = Field(ge=1)
    retrieval_score: float


class RankedResult(WireModel):
    """The answer to a query, sent to its `reply_to` subject."""

    kind: Literal["result"] = "result"
    request_id: str
    query: str
    results: list[RankedDoc]
    timings_ms: StageTimings
    batch_pairs: int = Field(ge=0, description="Pairs in the largest model batch it rode in.")
    batch_requests: int = Field(ge=0, description="Requests sharing that batch.")
    reranked: int = Field(ge=0, description="Candidates the cross-encoder scored.")
    degraded: bool = Field(
        default=False, description="Deadline passed before reranking: retrieval order."
    )
    model_id: str
    embedder_model: str


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    EXPIRED = "expired"
    OVERLOADED = "overloaded"
    MODEL_ERROR = "model_error"
    STORE_ERROR = "store_error"
    INTERNAL = "internal"


class ErrorResult(WireModel):
    """A request that could not be answered; `code` is for machines, `message` for people."""

    kind: Literal["error"] = "error"
    request_id: str
    code: ErrorCode
    message: str
    worker: str = Field(default="", description="The worker that failed: retrieval or rerank.")


Reply = Annotated[RankedResult | ErrorResult, Field(discriminator="kind")]
REPLY_ADAPTER: TypeAdapter[RankedResult | ErrorResult] = TypeAdapter(Reply)


class DeadLetter(WireModel):
    """A message that will never be answered normally, kept with why and what it was."""

    worker: str
    subject: str
    code: ErrorCode
    reason: str
    deliveries: int = Field(ge=0)
    request_id: str | None = None
    payload_preview: str = Field(description="The start of the payload, as UTF-8 text.")
    payload_base64: str = Field(description="The original bytes, exactly (unless truncated).")
    payload_bytes: int = Field(ge=0)
    payload_sha256: str
    truncated: bool = Field(description="True when the payload was too large to keep whole.")
    failed_at_ms: float = Field(default_factory=now_ms)
