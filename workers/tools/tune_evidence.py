"""What `rankstream tune` measures once per query, so every plan can be computed from it:
the dense and BM25 lists (with their scores and what they cost), and each candidate's score
by the scorer under each token budget (with what a pair cost).

Scoring goes through the code the rerank worker runs. A cross-encoder: the model's own
tokenizer, the budget's pair plan (`rankstream.models.budgets.plan_pairs`: head, MaxP
windows or the query-aware best window) and the model, each query's pairs batched as a rerank
worker batches them (sorted by length, cut at its `max_batch_pairs` and `max_batch_tokens`:
the cost per pair the tune reports is what the worker pays, and on CPU one batch of 32 mixed
lengths costs over twice as much per pair).
`maxsim`: the query's token vectors against the candidates' stored ones
(`rankstream.retrieval.token_store.TokenStore.maxsim`), one "pair" per candidate and no
token budget. A (query, document, budget) is scored once, whatever number of plans read it.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console

from rankstream.config import Settings
from rankstream.models.base import CrossEncoderBackend, Embedder, finite_scores
from rankstream.models.budgets import DocumentBudget, plan_pairs
from rankstream.models.late_interaction import TokenEmbedder
from rankstream.models.registry import load_cross_encoder, load_token_embedder
from rankstream.planning.scorers import MAXSIM_SCORER, scorer_model
from rankstream.retrieval.fusion import SearchMode
from rankstream.retrieval.store import DocumentStore
from rankstream.retrieval.token_store import TokenStore
from rankstream.scheduling.batcher import BatchLimits
from rankstream.scheduling.packing import tight_batches
from rankstream.scheduling.pair_scheduler import rerank_batch_limits
from rankstream.wire.pipeline import LONG_DOCS
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.progress import progress

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
    """What scoring took, per budget: CPU and wall seconds and the pairs scored (`cpu_ms`
    and `wall_ms` give the milliseconds per pair)."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, cpu_s: float, wall_s: float, pairs: int) -> None:
        self.cpu_s[key] = self.cpu_s.get(key, 0.0) + cpu_s
        self.wall_s[key] = self.wall_s.get(key, 0.0) + wall_s
        self.pairs[key] = self.pairs.get(key, 0) + pairs

    @property
    def cpu_ms(self) -> dict[str, float]:
        return {k: self.cpu_s[k] * 1000 / n for k, n in self.pairs.items() if n}

    @property
    def wall_ms(self) -> dict[str, float]:
        return {k: self.wall_s[k] * 1000 / n for k, n in self.pairs.items() if n}


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
    with progress(console, "retrieval (dense and BM25)", len(queries)) as advance:
        for query_id, text in queries.items():
            found.append(await _retrieve_one(store, embedder, query_id, text, depth))
            advance(1)
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


# Scores `docs` of a query under a budget into its evidence; returns the pairs it took.
QueryScorer = Callable[["QueryEvidence", Sequence[str], "Budget"], int]


def check_scorer(settings: Settings, scorer: str, budgets: Sequence[str]) -> str:
    """The model of a rerank stage's scorer name, checked against the budgets to try.

    Raises InvalidRequestError for a scorer the settings give no model (see
    `rankstream.planning.scorers`), UsageError for a token budget on `maxsim`, which scores
    whole documents' stored vectors."""
    model = scorer_model(settings, scorer)
    if scorer == MAXSIM_SCORER and any(budget != FULL for budget in budgets):
        raise UsageError(f"maxsim scores whole documents: give --budgets {FULL}")
    return model


def query_scorer(
    settings: Settings, scorer: str, budgets: Sequence[str]
) -> AbstractContextManager[QueryScorer]:
    """The scoring of a rerank stage's scorer name, as the rerank worker would run it (enter
    it to score); `settings` name the indexed table. Raises as `check_scorer` does."""
    model = check_scorer(settings, scorer, budgets)
    if scorer != MAXSIM_SCORER:
        limits = rerank_batch_limits(settings)
        return nullcontext(cross_encoder_scorer(load_cross_encoder(settings, model), limits))
    return _maxsim_scoring(settings)


@contextmanager
def _maxsim_scoring(settings: Settings) -> Iterator[QueryScorer]:
    embedder = load_token_embedder(settings)
    store = TokenStore.of(embedder, settings.lancedb_uri, settings.table)
    with asyncio.Runner() as runner:  # one loop: the store's async table belongs to it
        yield functools.partial(_score_maxsim, embedder, store, runner)


def score(
    scorer: QueryScorer,
    evidence: Sequence[QueryEvidence],
    wanted: dict[str, dict[str, set[str]]],
    console: Console,
    cost: ScoringCost | None = None,
) -> ScoringCost:
    """Score `wanted[budget][query_id]` (documents) in place (`QueryEvidence.scores`,
    `.pairs`); a pair already scored is not scored again. What it took is added to `cost`
    (a new one if None), which is returned."""
    cost = ScoringCost() if cost is None else cost
    for key, by_query in wanted.items():
        budget = Budget(key)
        todo = [(item, unscored(item, key, by_query.get(item.query_id, set())))
                for item in evidence]  # fmt: skip
        with progress(console, f"scoring {key}", sum(len(d) for _, d in todo)) as advance:
            for item, docs in todo:
                if docs:
                    cpu, wall = time.process_time(), time.perf_counter()
                    pairs = scorer(item, docs, budget)
                    cost.add(key, time.process_time() - cpu, time.perf_counter() - wall, pairs)
                    advance(len(docs))
    return cost


def unscored(item: QueryEvidence, key: str, docs: set[str]) -> list[str]:
    """Those of `docs` the query has no score for under the budget `key`, sorted."""
    return sorted(docs - item.scores.get(key, {}).keys())


def cross_encoder_scorer(model: CrossEncoderBackend, limits: BatchLimits) -> QueryScorer:
    """Scoring by `model`, each query's pairs in the batches a rerank worker under `limits`
    would make of them alone."""
    return functools.partial(_score_pairs, model, limits)


def _score_pairs(
    model: CrossEncoderBackend,
    limits: BatchLimits,
    item: QueryEvidence,
    docs: Sequence[str],
    budget: Budget,
) -> int:
    """Score `docs` of `item` under `budget` with a cross-encoder, in `limits`' batches."""
    codec = model.tokenizer
    query = codec.encode_query(item.text)
    documents = codec.encode_documents([item.texts[doc] for doc in docs])
    plan = plan_pairs(codec, query, documents, budget.document_budget)
    encodings = plan.encodings
    outputs = [0.0] * len(encodings)
    positions = range(len(encodings))
    lengths = [len(encoding) for encoding in encodings]
    for batch in tight_batches(positions, lengths, limits.max_items, limits.max_padded_tokens):
        for position, output in zip(batch, model.score([encodings[i] for i in batch]), strict=True):
            outputs[position] = output
    scores = finite_scores(outputs, model.model_id)
    windows = np.bincount(plan.owners, minlength=len(docs))
    _record(item, budget, docs, plan.candidate_scores(scores), [int(n) for n in windows])
    return len(plan.encodings)


def _score_maxsim(
    embedder: TokenEmbedder,
    store: TokenStore,
    runner: asyncio.Runner,
    item: QueryEvidence,
    docs: Sequence[str],
    budget: Budget,
) -> int:
    """Score `docs` of `item` by MaxSim against their stored token vectors."""
    query = embedder.embed_query(item.text)
    scores = runner.run(store.maxsim(query, docs))
    _record(item, budget, docs, scores, [1] * len(docs))
    return len(docs)


def _record(
    item: QueryEvidence,
    budget: Budget,
    docs: Sequence[str],
    scores: Sequence[float],
    pairs: Sequence[int],
) -> None:
    item.scores.setdefault(budget.key, {}).update(zip(docs, scores, strict=True))
    item.pairs.setdefault(budget.key, {}).update(zip(docs, pairs, strict=True))
