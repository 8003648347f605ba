"""The public wire contract: what a client publishes (`QueryRequest`, `RerankRequest`) and
what it receives (`RankedResult` or `ErrorResult`), as pydantic models (JSON on NATS).

Messages between the workers are in `rankstream.wire.handoff`; the cache's stored form is in
`rankstream.cache.store`; dead letters in `rankstream.workers.delivery`.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from rankstream.errors import ErrorCode
from rankstream.wire.filters import MAX_FILTER_CHARS, parse_filter

# 2: a cascade has one spelling, `stages` (version 1 also had `depth`, `max_doc_tokens` and
# `long_docs` on the request).
SCHEMA_VERSION: Literal[2] = 2


def now_ms() -> float:
    """Wall-clock milliseconds since the epoch: comparable across processes on one host."""
    return time.time() * 1000.0


# A subject a reply can be published to: dot-separated non-empty tokens, no whitespace or
# wildcards.
SUBJECT_PATTERN = r"^[^\s.*>]+(\.[^\s.*>]+)*$"
# A LanceDB table name: letters, digits, underscores, hyphens and dots, not led by a dot.
TABLE_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"


class WireModel(BaseModel):
    """Base for all messages: strict about unknown fields, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[2] = SCHEMA_VERSION


# Replies and their parts are read tolerantly: a field the reader does not know is ignored.
# During a rolling upgrade a client meets workers a version ahead of it, and a field added
# to an answer must not make the whole answer unreadable (the client would wait for its
# timeout). A change that a reader must not miss changes `schema_version` instead. Requests
# stay strict: a misspelt option is refused, never silently ignored.
TOLERANT = ConfigDict(extra="ignore", frozen=True)


class ReplyModel(WireModel):
    """Base for replies: versioned, unknown fields ignored (see `TOLERANT`)."""

    model_config = TOLERANT


RetrievalMode = Literal["dense", "bm25", "hybrid"]
LongDocuments = Literal["head", "maxp", "best"]
FusionMethod = Literal["rrf", "convex"]
# A weight of a convex combination: of the dense list in a fusion, of a stage's model in an
# interpolation.
Weight = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Depth = int | Literal["auto"]
AUTO: Literal["auto"] = "auto"
RequestId = Annotated[str, Field(min_length=1, max_length=128)]
ReplySubject = Annotated[
    str,
    Field(min_length=1, max_length=255, pattern=SUBJECT_PATTERN,
          description="Subject the result or error is sent to."),
]  # fmt: skip
CreatedAt = Annotated[
    float,
    Field(ge=0, allow_inf_nan=False,
          description="When the client made the request (wall-clock ms since the epoch). A "
          "time in the future beyond the workers' clock-skew allowance is replaced by the time "
          "the request was received."),
]  # fmt: skip
TimeoutMs = Annotated[
    int,
    Field(ge=1, description="Deadline = created_at + timeout; at most the workers' "
          "max_timeout_ms."),
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
        description="ce (the configured cross-encoder), ce-int8, ce-fp32, student, maxsim, "
        "or another scorer the workers know.",
    )
    depth: Depth = Field(
        default=20,
        description="Candidates this stage scores; `auto` (first stage only): chosen from "
        "the retrieval's confidence, up to the worker's max_auto_depth.",
    )
    max_doc_tokens: int | None = Field(
        default=None,
        ge=8,
        description="Tokens a pair gives the document; the query is never cut (None: the "
        "worker's default_max_doc_tokens, else what max_length leaves).",
    )
    long_docs: LongDocuments | None = Field(
        default=None,
        description="A document over the budget: `head` keeps its first tokens, `maxp` scores "
        "each window of the budget's size and keeps the best, `best` scores the one window "
        "that holds the most of the query's tokens (None: the worker's default_long_docs).",
    )
    interpolate: Weight | None = Field(
        default=None,
        description="Blend the stage's model score with the score the candidate had before "
        "it (each min-max normalised over the candidates the stage scores): "
        "`w * model + (1 - w) * before`. None: the model's score alone (w = 1).",
    )

    @model_validator(mode="after")
    def _positive_depth(self) -> RerankStage:
        if self.depth != AUTO and self.depth < 1:
            raise ValueError("a stage reranks at least one candidate")
        return self

    @property
    def name(self) -> str:
        """Compact, as in the pipeline grammar: `ce@20`, `ce@auto/doc256`, `ce@100/maxp128`,
        `ce@20/best128~0.7`."""
        blend = f"~{weight_text(self.interpolate)}" if self.interpolate is not None else ""
        return f"{self.scorer}@{self.depth}{self.budget}{blend}"

    @property
    def budget(self) -> str:
        """The token budget as the grammar writes it: `/doc256`, `/maxp128`, `/best128`;
        empty for none."""
        if self.max_doc_tokens is None:
            return ""
        kind = "doc" if self.long_docs in (None, "head") else self.long_docs
        return f"/{kind}{self.max_doc_tokens}"


def weight_text(weight: float) -> str:
    """A weight as the pipeline grammar writes it: `0.7`, `0.35`, `1`."""
    return f"{weight:.4f}".rstrip("0").rstrip(".")


Stages = Annotated[
    list[RerankStage] | None,
    Field(max_length=4,
          description="A cascade of rerank stages, each over the top of the previous one's "
          "order (depths must not grow). None: the workers' default cascade; []: no "
          "reranking (the retrieval order)."),
]  # fmt: skip


def check_cascade(stages: list[RerankStage] | None) -> None:
    """Raise ValueError unless only the first stage is `auto` and fixed depths never grow."""
    depths = [stage.depth for stage in stages or []]
    if AUTO in depths[1:]:
        raise ValueError("only the first stage may have depth `auto`")
    fixed = [d for d in depths if d != AUTO]
    if any(later > earlier for earlier, later in itertools.pairwise(fixed)):
        raise ValueError("each stage reranks at most as many candidates as the one before")


class QueryRequest(WireModel):
    """A user's query, published to the queries subject."""

    request_id: RequestId = Field(default_factory=lambda: uuid.uuid4().hex)
    query: str = Field(min_length=1)
    top_k: int = Field(default=10, ge=1, description="How many ranked results to return.")
    retrieval: RetrievalMode | None = Field(
        default=None,
        description="dense (bi-encoder), bm25 (full text) or hybrid (both); None: the "
        "workers' default_retrieval.",
    )
    fusion_weight: Weight | None = Field(
        default=None,
        description="hybrid only: fuse the two lists by a convex combination of their "
        "per-query min-max normalised scores with this weight on dense, 1 - it on BM25 "
        "(rankstream.retrieval.fusion). None: the workers' default fusion (the profile's, "
        "else reciprocal rank fusion).",
    )
    stages: Stages = None
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
        "AND, OR, NOT, parentheses (rankstream/wire/filters.py). A column the table lacks, "
        "or a literal of the wrong type for its column, is an invalid request.",
    )
    created_at_ms: CreatedAt = Field(default_factory=now_ms)
    timeout_ms: TimeoutMs = 30_000
    reply_to: ReplySubject

    @field_validator("filter")
    @classmethod
    def _filter_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_filter(value)  # FilterError is a ValueError: a validation error
        return value

    @model_validator(mode="after")
    def _cascade_narrows(self) -> QueryRequest:
        check_cascade(self.stages)
        if self.fusion_weight is not None and self.retrieval not in (None, "hybrid"):
            raise ValueError(f"fusion_weight fuses hybrid lists; {self.retrieval} has one list")
        return self

    @property
    def deadline_ms(self) -> float:
        """When the client stops waiting (the workers bound it at admission)."""
        return self.created_at_ms + self.timeout_ms


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

    request_id: RequestId = Field(default_factory=lambda: uuid.uuid4().hex)
    query: str = Field(min_length=1)
    documents: list[RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1, description="Results to return (None: all).")
    stages: list[RerankStage] | None = Field(
        default=None,
        max_length=4,
        description="A cascade over the documents, in their order; None: `ce` scores them all.",
    )
    return_documents: bool = Field(
        default=True, description="Include each result's text; false: ids and scores only."
    )
    priority: Priority = 0
    created_at_ms: CreatedAt = Field(default_factory=now_ms)
    timeout_ms: TimeoutMs = 30_000
    reply_to: ReplySubject

    @model_validator(mode="after")
    def _cascade_narrows(self) -> RerankRequest:
        check_cascade(self.stages)
        if self.stages and self.stages[0].depth == AUTO:
            raise ValueError("depth `auto` reads the retrieval's confidence: give a number")
        return self

    @property
    def deadline_ms(self) -> float:
        """When the client stops waiting (the workers bound it at admission)."""
        return self.created_at_ms + self.timeout_ms


class StageTimings(BaseModel):
    """Milliseconds per stage. Stages are disjoint intervals, so their sum is <= total_ms."""

    model_config = ConfigDict(extra="ignore")

    queue_wait: float = 0.0
    cache: float = 0.0
    embed: float = 0.0
    search: float = 0.0
    rerank_queue_wait: float = 0.0
    batch_wait: float = 0.0
    inference: float = 0.0
    total: float = 0.0


class RetrievalReport(BaseModel):
    """How the candidates were found: the mode and, for a convex `hybrid`, its weight on
    dense; the time the vector (`dense_ms`) and the full-text (`bm25_ms`) searches took; the
    table version searched; for depth `auto`, the depth chosen and the confidence it was
    chosen from; and the search's confidence signals (`features`, what adaptive depth
    reads)."""

    model_config = TOLERANT

    mode: RetrievalMode | Literal["none"] = "dense"
    fusion_weight: float | None = Field(
        default=None,
        description="`hybrid~W`: the weight W on dense (asked, or the profile's); null: "
        "reciprocal rank fusion, or one list.",
    )
    dense_ms: float = 0.0
    bm25_ms: float = 0.0
    table_version: int | None = None
    chosen_depth: int | None = None
    confidence: float | None = None
    features: dict[str, float] = Field(default_factory=dict)


class RankedDoc(BaseModel):
    model_config = TOLERANT

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

    model_config = TOLERANT

    name: str = Field(description="As in the pipeline grammar, e.g. `ce@20/doc256`.")
    model_id: str
    candidates: int = Field(ge=0, description="Candidates it scored.")
    pairs: int = Field(ge=0, description="Pairs the model scored (MaxP: a pair per window).")
    over_budget: int = Field(ge=0, description="Candidates longer than the token budget.")
    truncated_tokens: int = Field(ge=0, description="Document tokens no pair held.")
    batch_wait_ms: float = 0.0
    inference_ms: float = 0.0


class RankedResult(ReplyModel):
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
    profile: str | None = Field(
        default=None,
        description="Digest of the served profile whose plan answered (the request named "
        "none); null: the request's own plan.",
    )

    def as_asked(self, return_documents: bool) -> RankedResult:
        """What a request asked to be sent: without the texts if it set `return_documents`
        false."""
        if return_documents:
            return self
        results = [doc.model_copy(update={"text": None}) for doc in self.results]
        return self.model_copy(update={"results": results})


class ErrorResult(ReplyModel):
    """A request that could not be answered; `code` is for machines, `message` for people."""

    kind: Literal["error"] = "error"
    request_id: str
    code: ErrorCode
    message: str
    worker: str = Field(default="", description="The worker that failed: retrieval or rerank.")


Reply = Annotated[RankedResult | ErrorResult, Field(discriminator="kind")]
REPLY_ADAPTER: TypeAdapter[RankedResult | ErrorResult] = TypeAdapter(Reply)
