"""Wire schemas: every message that crosses NATS is one of these pydantic models (JSON)."""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from rankstream.wire.filters import MAX_FILTER_CHARS, parse_filter

SCHEMA_VERSION: Literal[1] = 1
# A subject a reply can be published to: dot-separated non-empty tokens, no whitespace or
# wildcards.
SUBJECT_PATTERN = r"^[^\s.*>]+(\.[^\s.*>]+)*$"
# A LanceDB table name: letters, digits, underscores, hyphens and dots, not led by a dot.
TABLE_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"


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


RetrievalMode = Literal["dense", "bm25", "hybrid"]
LongDocuments = Literal["head", "maxp"]
Depth = int | Literal["auto"]
AUTO: Literal["auto"] = "auto"
DocumentTokenBudget = Annotated[
    int | None,
    Field(ge=8, description="Tokens a pair gives the document; the query is never cut "
          "(None: the worker's default_max_doc_tokens, else what max_length leaves)."),
]  # fmt: skip
LongDocumentsPolicy = Annotated[
    LongDocuments | None,
    Field(description="A document over the budget: `head` keeps its first tokens, `maxp` "
          "scores each window of the budget's size and keeps the best (None: the worker's "
          "default_long_docs)."),
]  # fmt: skip


Priority = Annotated[
    int,
    Field(ge=0, le=999, description="Lower is sooner (0, the default, is the most urgent): "
          "0-333 interactive, 334-667 standard, 668-999 batch. A rerank worker fills its "
          "batches from the most urgent lane first; waiting raises a request's lane."),
]  # fmt: skip


class RerankStage(BaseModel):
    """One step of a cascade: `scorer` reranks the top `depth` of the order so far."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scorer: str = Field(
        default="ce",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="ce (the configured cross-encoder), ce-int8, ce-fp32, or another scorer "
        "the rerank worker knows.",
    )
    depth: Depth = Field(
        default=20,
        description="Candidates this stage scores; `auto` (first stage only): chosen from "
        "the retrieval's confidence, up to the worker's max_auto_depth.",
    )
    max_doc_tokens: DocumentTokenBudget = None
    long_docs: LongDocumentsPolicy = None

    @model_validator(mode="after")
    def _positive_depth(self) -> RerankStage:
        if self.depth != AUTO and self.depth < 1:
            raise ValueError("a stage reranks at least one candidate")
        return self

    @property
    def name(self) -> str:
        """Compact, as in the pipeline grammar: `ce@20`, `ce@auto/doc256`, `ce@100/maxp128`."""
        budget = ""
        if self.max_doc_tokens is not None:
            kind = "maxp" if self.long_docs == "maxp" else "doc"
            budget = f"/{kind}{self.max_doc_tokens}"
        return f"{self.scorer}@{self.depth}{budget}"


class QueryRequest(WireModel):
    """A user's query, published to the queries subject."""

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    query: str = Field(min_length=1)
    top_k: int = Field(default=10, ge=1, description="How many ranked results to return.")
    depth: Depth = Field(
        default=20,
        description="Candidates the cross-encoder reranks; 0 returns the retrieval order; "
        "`auto` lets the worker choose from the retrieval's confidence. Ignored when "
        "`stages` is given.",
    )
    retrieval: RetrievalMode = Field(
        default="dense", description="dense (bi-encoder), bm25 (full text) or hybrid (both)."
    )
    stages: list[RerankStage] = Field(
        default_factory=list,
        max_length=4,
        description="A cascade of rerank stages, each over the top of the previous one's "
        "order (depths must not grow); empty: one `ce` stage over `depth`.",
    )
    max_doc_tokens: DocumentTokenBudget = None  # of the `depth` stage
    long_docs: LongDocumentsPolicy = None  # of the `depth` stage
    cache: bool = Field(default=True, description="Answer from (and into) the result cache.")
    return_documents: bool = Field(
        default=True,
        description="Include each result's text; false: ids and scores only (a smaller answer).",
    )
    priority: Priority = 0
    table: str | None = Field(
        default=None,
        max_length=128,
        pattern=TABLE_PATTERN,
        description="The LanceDB table (collection) to search; None: the worker's configured "
        "table. A table that does not exist is an invalid request.",
    )
    filter: str | None = Field(
        default=None,
        max_length=MAX_FILTER_CHARS,
        description="A metadata filter over the table's columns (the documents' extra JSON "
        "fields), e.g. `topic = 'energy' AND year >= 2020`: comparisons, IN, IS [NOT] NULL, "
        "AND, OR, NOT, parentheses (rankstream/wire/filters.py). A column the table lacks is "
        "an invalid request.",
    )
    created_at_ms: float = Field(default_factory=now_ms)
    timeout_ms: int = Field(default=30_000, ge=1, description="Deadline = created_at + timeout.")
    reply_to: str = Field(
        min_length=1,
        max_length=255,
        pattern=SUBJECT_PATTERN,
        description="Subject the result or error is sent to.",
    )

    @field_validator("filter")
    @classmethod
    def _filter_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_filter(value)  # FilterError is a ValueError: a validation error
        return value

    @model_validator(mode="after")
    def _cascade_narrows(self) -> QueryRequest:
        if self.depth != AUTO and self.depth < 0:
            raise ValueError("depth must be 0 or more, or `auto`")
        depths = [stage.depth for stage in self.stages]
        if AUTO in depths[1:]:
            raise ValueError("only the first stage may have depth `auto`")
        fixed = [d for d in depths if d != AUTO]
        if any(later > earlier for earlier, later in itertools.pairwise(fixed)):
            raise ValueError("each stage reranks at most as many candidates as the one before")
        return self

    @property
    def deadline_ms(self) -> float:
        return self.created_at_ms + self.timeout_ms

    def rerank_stages(self) -> list[RerankStage]:
        """The cascade this request asks for: `stages`, or one `ce` stage over `depth`
        (none when depth is 0)."""
        if self.stages:
            return list(self.stages)
        if self.depth == 0:
            return []
        return [
            RerankStage(
                depth=self.depth, max_doc_tokens=self.max_doc_tokens, long_docs=self.long_docs
            )
        ]

    def candidate_count(self, max_auto_depth: int) -> int:
        """How many candidates retrieval must return: enough to rerank and to answer."""
        stages = self.rerank_stages()
        first = stages[0].depth if stages else 0
        return max(self.top_k, max_auto_depth if first == AUTO else first)


class RerankDocument(BaseModel):
    """A candidate the caller brings: its text, and an id of the caller's (default: its
    position in the request, from 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1)
    id: str | None = Field(default=None, min_length=1, max_length=512)


class RerankRequest(WireModel):
    """A query and the candidates to rerank, published to the rerank subject: no
    retrieval; the rerank workers batch its pairs with every other request's, and answer
    with a RankedResult whose documents' `retrieval_rank` is their position here, from 1."""

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    query: str = Field(min_length=1)
    documents: list[RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1, description="Results to return (None: all).")
    stages: list[RerankStage] = Field(
        default_factory=list,
        max_length=4,
        description="A cascade over the documents; empty: `ce` scores them all.",
    )
    max_doc_tokens: DocumentTokenBudget = None
    long_docs: LongDocumentsPolicy = None
    priority: Priority = 0
    created_at_ms: float = Field(default_factory=now_ms)
    timeout_ms: int = Field(default=30_000, ge=1, description="Deadline = created_at + timeout.")
    reply_to: str = Field(min_length=1, max_length=255, pattern=SUBJECT_PATTERN)

    @property
    def deadline_ms(self) -> float:
        return self.created_at_ms + self.timeout_ms

    def as_candidate_set(self) -> CandidateSet:
        """The same work as a candidate set the rerank worker already knows how to score."""
        request = QueryRequest(
            request_id=self.request_id,
            query=self.query,
            top_k=self.top_n or len(self.documents),
            depth=len(self.documents),
            stages=self.stages,
            max_doc_tokens=self.max_doc_tokens,
            long_docs=self.long_docs,
            cache=False,
            priority=self.priority,
            created_at_ms=self.created_at_ms,
            timeout_ms=self.timeout_ms,
            reply_to=self.reply_to,
        )
        candidates = [
            Candidate(
                doc_id=document.id if document.id is not None else str(position),
                text=document.text,
                retrieval_score=0.0,
                retrieval_rank=position + 1,
            )
            for position, document in enumerate(self.documents)
        ]
        return CandidateSet(
            request=request,
            candidates=candidates,
            timings_ms=StageTimings(),
            published_at_ms=self.created_at_ms,  # its queue wait is all rerank queue wait
            embedder_model="none",
            retrieval=RetrievalReport(mode="none"),
        )


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_id: str
    text: str
    retrieval_score: float
    retrieval_rank: int = Field(ge=1)
    token_ids: list[int] | None = Field(
        default=None,
        description="The text's token ids (no special tokens) for the cross-encoder whose "
        "tokenizer the candidate set names; computed once at index time.",
    )


class StageTimings(BaseModel):
    """Milliseconds per stage. Stages are disjoint intervals, so their sum is <= total_ms."""

    model_config = ConfigDict(extra="forbid")

    queue_wait: float = 0.0
    cache: float = 0.0
    embed: float = 0.0
    search: float = 0.0
    rerank_queue_wait: float = 0.0
    batch_wait: float = 0.0
    inference: float = 0.0
    total: float = 0.0


class RetrievalReport(BaseModel):
    """How the candidates were found: the mode; the time the vector (`dense_ms`) and the
    full-text (`bm25_ms`) searches took; the table version searched; for depth `auto`, the
    depth chosen and the confidence it was chosen from; and the search's confidence signals
    (`features`, what adaptive depth reads)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: RetrievalMode | Literal["none"] = "dense"
    dense_ms: float = 0.0
    bm25_ms: float = 0.0
    table_version: int | None = None
    chosen_depth: int | None = None
    confidence: float | None = None
    features: dict[str, float] = Field(default_factory=dict)


class CacheTicket(BaseModel):
    """Where the worker that answers a request caches the answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    context: str
    query: str = Field(description="The normalised query.")
    query_vector: list[float] | None = None


class CandidateSet(WireModel):
    """Retrieval's output, the rerank worker's input."""

    request: QueryRequest
    candidates: list[Candidate]
    timings_ms: StageTimings
    published_at_ms: float = Field(default_factory=now_ms)
    embedder_model: str
    retrieval: RetrievalReport = Field(default_factory=RetrievalReport)
    tokenizer: str | None = Field(
        default=None, description="Fingerprint of the tokenizer that made the token_ids."
    )
    first_depth: int | None = Field(
        default=None, description="The first stage's depth, `auto` resolved."
    )
    cache: CacheTicket | None = Field(
        default=None, description="Where the answer is to be cached (None: not cached)."
    )


class RankedDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_id: str
    text: str | None = Field(
        description="The document; null when the request set `return_documents` false."
    )
    score: float = Field(description="Rerank score (higher = more relevant) or retrieval score.")
    retrieval_rank: int = Field(ge=1)
    retrieval_score: float
    stage: str = Field(
        default="retrieval", description="What gave `score`: a rerank stage, or retrieval."
    )


class StageReport(BaseModel):
    """One rerank stage of the answer: what it scored and what it took."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="As in the pipeline grammar, e.g. `ce@20/doc256`.")
    model_id: str
    candidates: int = Field(ge=0, description="Candidates it scored.")
    pairs: int = Field(ge=0, description="Pairs the model scored (MaxP: a pair per window).")
    over_budget: int = Field(ge=0, description="Candidates longer than the token budget.")
    truncated_tokens: int = Field(ge=0, description="Document tokens no pair held.")
    batch_wait_ms: float = 0.0
    inference_ms: float = 0.0


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
    stages: list[StageReport] = Field(default_factory=list)
    retrieval: RetrievalReport = Field(default_factory=RetrievalReport)
    cached: bool = Field(default=False, description="Answered from the result cache.")

    def as_asked(self, request: QueryRequest) -> RankedResult:
        """What `request` asked to be sent: without the texts if it set `return_documents`
        false."""
        if request.return_documents:
            return self
        results = [doc.model_copy(update={"text": None}) for doc in self.results]
        return self.model_copy(update={"results": results})


class CachedAnswer(WireModel):
    """An answer as the result cache keeps it (rankstream/cache.py): what a hit replays."""

    query: str = Field(description="The normalised query.")
    context: str = Field(description="Digest of everything besides the query it depends on.")
    results: list[RankedDoc]
    reranked: int = Field(ge=0)
    model_id: str
    embedder_model: str
    stages: list[StageReport] = Field(default_factory=list)
    retrieval: RetrievalReport = Field(default_factory=RetrievalReport)
    query_vector: list[float] | None = Field(
        default=None, description="The query's embedding, for the semantic tier."
    )
    cached_at_ms: float = Field(default_factory=now_ms)


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
