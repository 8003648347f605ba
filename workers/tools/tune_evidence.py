"""What `rankstream tune` measures once per query, so every plan can be computed from it:
the dense and BM25 lists (with their scores and what they cost), and each candidate's score
by the scorer under each token budget (with what a pair cost).

Scoring goes through the code the rerank worker runs: the model's own tokenizer, the
budget's pair plan (`rankstream.models.budgets.plan_pairs`: head, MaxP windows or the
query-aware best window) and the model, in batches of `SCORE_BATCH` pairs. A (query,
document, budget) is scored once, whatever number of plans read it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.progress import Progress

from rankstream.config import Settings
from rankstream.models.base import CrossEncoderBackend, Embedder, finite_scores
from rankstream.models.budgets import DocumentBudget, plan_pairs
from rankstream.retrieval.fusion import SearchMode
from rankstream.retrieval.store import DocumentStore
from rankstream.wire.pipeline import LONG_DOCS
from rankstream.workers.tools.errors import UsageError

SCORE_BATCH = 32
FULL = "full"  # the budget key of a stage with no document budget: what max_length leaves
BUDGET = re.compile(r"^/(?P<kind>doc|maxp|best)(?P<tokens>[0-9]+)$")
Hits = list[tuple[str, float]]


@dataclass(frozen=True)
class Budget:
    """A stage's token budget: `key` as the pipeline grammar writes it after the depth
    (`/best128`, `/doc128`, `/maxp128`), FULL for none."""

    key: str

    @property
    def document_budget(self) -> DocumentBudget:
        if self.key == FULL:
            return DocumentBudget()
        match = BUDGET.match(self.key)
        if match is None:
            raise UsageError(f"{self.key!r} is not a token budget (/docN, /maxpN, /bestN, full)")
        return DocumentBudget(int(match["tokens"]), LONG_DOCS[match["kind"]])

    @property
    def suffix(self) -> str:
        """What follows `SCORER@DEPTH` in the grammar."""
        return "" if self.key == FULL else self.key


@dataclass
class QueryEvidence:
    """One query: both lists best first (cosine / BM25 scores), the CPU and wall
    milliseconds each part of its retrieval took, and `scores[budget][doc]` (the scorer's
    score) with `pairs[budget][doc]` (pairs it took: MaxP windows count)."""

    query_id: str
    text: str
    dense: Hits
    bm25: Hits
    cpu_ms: dict[str, float]  # embed, dense, bm25
    wall_ms: dict[str, float]
    texts: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    pairs: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class ScoringCost:
    """CPU and wall milliseconds per pair, per budget, as measured while scoring."""

    cpu_ms: dict[str, float] = field(default_factory=dict)
    wall_ms: dict[str, float] = field(default_factory=dict)


async def retrieve(
    settings: Settings,
    embedder: Embedder,
    queries: dict[str, str],
    depth: int,
    console: Console,
) -> list[QueryEvidence]:
    """Each query's dense and BM25 top `depth`, from the same store the workers search, one
    query at a time (so the costs are one query's)."""
    store = DocumentStore.from_settings(settings)
    found = []
    with Progress(console=console) as progress:
        task = progress.add_task("retrieval (dense and BM25)", total=len(queries))
        for query_id, text in queries.items():
            found.append(await _retrieve_one(store, embedder, query_id, text, depth))
            progress.advance(task)
    return found


async def _retrieve_one(
    store: DocumentStore, embedder: Embedder, query_id: str, text: str, depth: int
) -> QueryEvidence:
    cpu, wall = time.process_time(), time.perf_counter()
    vector = np.asarray(embedder.embed_queries([text]))[0]
    cpu_ms = {"embed": (time.process_time() - cpu) * 1000}
    wall_ms = {"embed": (time.perf_counter() - wall) * 1000}
    lists: dict[str, Hits] = {}
    texts: dict[str, str] = {}
    for mode in (SearchMode.DENSE, SearchMode.BM25):
        cpu, wall = time.process_time(), time.perf_counter()
        result = await store.search(text, vector, depth, mode)
        cpu_ms[mode.value] = (time.process_time() - cpu) * 1000
        wall_ms[mode.value] = (time.perf_counter() - wall) * 1000
        lists[mode.value] = [(hit.doc_id, hit.score) for hit in result.hits]
        texts.update((hit.doc_id, hit.text) for hit in result.hits)
    return QueryEvidence(
        query_id, text, lists["dense"], lists["bm25"], cpu_ms, wall_ms, texts=texts
    )


def score(
    model: CrossEncoderBackend,
    evidence: Sequence[QueryEvidence],
    wanted: dict[str, dict[str, set[str]]],
    console: Console,
) -> ScoringCost:
    """Score `wanted[budget][query_id]` (documents) in place (`QueryEvidence.scores`,
    `.pairs`); a pair already scored is not scored again."""
    cost = ScoringCost()
    for key, by_query in wanted.items():
        budget = Budget(key)
        todo = [
            (item, sorted(by_query.get(item.query_id, set()) - item.scores.get(key, {}).keys()))
            for item in evidence
        ]
        cpu_s = wall_s = 0.0
        pairs = 0
        with Progress(console=console) as progress:
            task = progress.add_task(f"scoring {key}", total=sum(len(d) for _, d in todo))
            for item, docs in todo:
                if docs:
                    cpu, wall = time.process_time(), time.perf_counter()
                    pairs += _score_query(model, item, docs, budget)
                    cpu_s += time.process_time() - cpu
                    wall_s += time.perf_counter() - wall
                    progress.advance(task, len(docs))
        if pairs:
            cost.cpu_ms[key] = cpu_s * 1000 / pairs
            cost.wall_ms[key] = wall_s * 1000 / pairs
    return cost


def _score_query(
    model: CrossEncoderBackend, item: QueryEvidence, docs: Sequence[str], budget: Budget
) -> int:
    """Score `docs` of `item` under `budget` into it; returns the pairs it took."""
    codec = model.tokenizer
    query = codec.encode_query(item.text)
    documents = codec.encode_documents([item.texts[doc] for doc in docs])
    plan = plan_pairs(codec, query, documents, budget.document_budget)
    outputs: list[float] = []
    for start in range(0, len(plan.encodings), SCORE_BATCH):
        outputs += model.score(plan.encodings[start : start + SCORE_BATCH])
    scores = finite_scores(outputs, model.model_id)
    windows = np.bincount(plan.owners, minlength=len(docs))
    item.scores.setdefault(budget.key, {}).update(
        zip(docs, plan.candidate_scores(scores), strict=True)
    )
    item.pairs.setdefault(budget.key, {}).update(
        (doc, int(n)) for doc, n in zip(docs, windows, strict=True)
    )
    return len(plan.encodings)
