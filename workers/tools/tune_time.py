"""How many queries `rankstream tune` can score within `--max-minutes`.

Scoring candidates with the model is what takes a tune's time (retrieval and fitting take
seconds to a few minutes). Once retrieval has run, the tune knows which documents each
query would have scored under each token budget; it scores a few queries first, which gives
the wall milliseconds a document costs under each budget (MaxP windows included), and
estimates every other query from its documents. If the estimate is over the time, the query
lists are cut from their end (the first queries are kept, as `--limit` keeps them):

- with a tuning split, the held-out queries keep as many as fit in half the time (more
  where the tuning queries need less), and the tuning queries get what is left;
- with k-fold cross-validation every query is both tuned on and held out: one list is cut.

No list is cut below `MIN_QUERIES`, so a very short time is overrun rather than fitted on
a handful of queries; the report says what was cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_QUERIES = 10


@dataclass(frozen=True)
class Affordable:
    """How many of each list to keep, and the estimated minutes of scoring all of them."""

    tuning: int
    held_out: int
    all_minutes: float

    def cuts(self, tuning: int, held_out: int) -> bool:
        return self.tuning < tuning or self.held_out < held_out


def affordable(
    tuning_ms: Sequence[float],
    held_out_ms: Sequence[float] | None,
    minutes: float,
    at_least: int = 0,
) -> Affordable:
    """How many of the tuning and held-out queries (each list's estimated scoring ms, in
    order) fit in `minutes`, keeping at least MIN_QUERIES and `at_least` of each list (or
    all it has). `held_out_ms` is None under cross-validation, where the tuning queries are
    the held-out ones too."""
    budget = minutes * 60_000
    floor = max(MIN_QUERIES, at_least)
    spent_on_tuning = float(sum(tuning_ms))
    if held_out_ms is None:
        kept = _prefix(tuning_ms, budget, floor)
        return Affordable(kept, kept, spent_on_tuning / 60_000)
    spent_on_held_out = float(sum(held_out_ms))
    held_out = _prefix(held_out_ms, max(budget / 2, budget - spent_on_tuning), floor)
    tuning = _prefix(tuning_ms, budget - float(sum(held_out_ms[:held_out])), floor)
    return Affordable(tuning, held_out, (spent_on_tuning + spent_on_held_out) / 60_000)


def _prefix(costs: Sequence[float], allowance: float, floor: int) -> int:
    """The longest prefix of `costs` within `allowance`, never under `floor` (or all)."""
    within = int(np.searchsorted(np.cumsum(costs), allowance, side="right"))
    return min(len(costs), max(within, floor))


def ms_per_document(
    wall_ms_per_pair: Mapping[str, float], pairs_per_document: Mapping[str, float]
) -> dict[str, float]:
    """Wall ms a document costs under each budget: its pairs (MaxP windows) at a pair's cost."""
    return {k: ms * pairs_per_document.get(k, 1.0) for k, ms in wall_ms_per_pair.items()}


def query_ms(documents: Mapping[str, int], per_document: Mapping[str, float]) -> float:
    """A query's estimated scoring ms from its documents still to score under each budget."""
    known = max(per_document.values(), default=0.0)  # a budget the sample did not score
    return sum(n * per_document.get(budget, known) for budget, n in documents.items())
