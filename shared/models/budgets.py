"""Token budgets: which pairs a rerank stage sends to the model for its candidates.

The query is never cut. A document gets the room the query leaves within the model's
`max_length`, or `max_tokens` when that is smaller. A document over it is either cut to its
head, or (MaxP: Dai & Callan, 2019) split into windows of the budget's size, each
half-overlapping the last, at most `max_windows` of them; every window is a pair, and the
document's score is its best window's. MaxP costs up to `max_windows` pairs per long
document where head costs one.

`best` is query-aware pruning at head's price: of the windows of the budget's size (every
quarter of it), the one pair scored is the window that holds the most distinct query
tokens, then the most query-token occurrences, then the earliest (the head wins ties, so a
document whose body never mentions the query is cut as by `head`). A cheap signal, read from
token ids alone: no model, no index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from rankstream.models.base import PairEncoding, TokenIds

LongDocuments = Literal["head", "maxp", "best"]


class PairJoiner(Protocol):
    def document_room(self, query: TokenIds) -> int: ...

    def join(self, query: TokenIds, document: TokenIds) -> PairEncoding: ...


@dataclass(frozen=True)
class DocumentBudget:
    max_tokens: int | None = None
    long_docs: LongDocuments = "head"
    max_windows: int = 4


@dataclass(frozen=True)
class PairPlan:
    """The pairs for a stage's candidates; `owners[i]` is the candidate pair `i` scores.
    `over_budget` candidates were longer than the budget; `truncated_tokens` no pair holds."""

    encodings: list[PairEncoding]
    owners: list[int]
    candidates: int
    over_budget: int
    truncated_tokens: int

    def candidate_scores(self, pair_scores: Sequence[float]) -> list[float]:
        """Each candidate's score: its pair's, or its best window's."""
        best: list[float | None] = [None] * self.candidates
        for owner, score in zip(self.owners, pair_scores, strict=True):
            current = best[owner]
            best[owner] = score if current is None else max(current, score)
        if any(score is None for score in best):
            raise ValueError("a candidate has no pair in the plan")
        return [float(score) for score in best if score is not None]


def plan_pairs(
    joiner: PairJoiner, query: TokenIds, documents: Sequence[TokenIds], budget: DocumentBudget
) -> PairPlan:
    """The pairs scoring `documents` against `query` under `budget`."""
    room = joiner.document_room(query)
    size = min(budget.max_tokens, room) if budget.max_tokens is not None else room
    encodings: list[PairEncoding] = []
    owners: list[int] = []
    over_budget = truncated_tokens = 0
    for owner, document in enumerate(documents):
        windows = _windows(query, document, size, budget)
        covered = _covered(len(document), windows, size, budget)
        over_budget += len(document) > size
        truncated_tokens += len(document) - covered
        encodings += [joiner.join(query, window) for window in windows]
        owners += [owner] * len(windows)
    return PairPlan(encodings, owners, len(documents), over_budget, truncated_tokens)


def _covered(length: int, windows: Sequence[TokenIds], size: int, budget: DocumentBudget) -> int:
    """Tokens of a document of `length` that its windows hold."""
    if budget.long_docs == "best":
        return len(windows[0])
    return min(length, (len(windows) - 1) * max(1, size // 2) + size)


def _windows(
    query: TokenIds, document: TokenIds, size: int, budget: DocumentBudget
) -> list[TokenIds]:
    if len(document) <= size or budget.long_docs == "head":
        return [document[:size]]
    if budget.long_docs == "best":
        return [best_window(query, document, size)]
    stride = max(1, size // 2)
    starts = range(0, len(document) - size + stride, stride)
    return [document[start : start + size] for start in starts][: budget.max_windows]


def best_window(query: TokenIds, document: TokenIds, size: int) -> TokenIds:
    """The window of `size` tokens of `document` (starts every quarter of `size`, the last
    flush with the end) holding the most distinct `query` tokens, then the most occurrences
    of them; the earliest of equals."""
    wanted = set(query)
    stride = max(1, size // 4)
    starts = [*range(0, len(document) - size, stride), len(document) - size]

    def matches(start: int) -> tuple[int, int, int]:
        window = document[start : start + size]
        hits = [token for token in window if token in wanted]
        return len(set(hits)), len(hits), -start

    return document[max(starts, key=matches) :][:size]
