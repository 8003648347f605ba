"""The tune scores each query's candidates in the batches a rerank worker would make of them
(sorted by length, within its batch limits), so the cost per pair it reports is the worker's;
every candidate keeps its own score whatever batch it landed in."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from rankstream.models.base import PairEncoding
from rankstream.scheduling.batcher import BatchLimits
from rankstream.workers.tools.tune_evidence import FULL, QueryEvidence, cross_encoder_scorer, score

from .fakes import OverlapCrossEncoder

LIMITS = BatchLimits(max_items=4, max_padded_tokens=40, max_wait_s=0)


class RecordingCrossEncoder(OverlapCrossEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.lengths: list[list[int]] = []

    def score(self, batch: Sequence[PairEncoding]) -> list[float]:
        self.lengths.append([len(encoding) for encoding in batch])
        return super().score(batch)


def candidates() -> dict[str, str]:
    """Documents of many lengths, each sharing a different number of the query's words."""
    query_words = ["alpha", "beta", "gamma", "delta"]
    return {f"d{i}": " ".join(query_words[: i % 5] + ["filler"] * (3 * i % 17)) for i in range(12)}


def test_each_candidate_keeps_its_own_score_in_batches_within_the_worker_limits() -> None:
    texts = candidates()
    item = QueryEvidence(
        "q", "alpha beta gamma delta", dense=[], bm25=[], cpu_ms={}, wall_ms={}, texts=texts
    )
    model = RecordingCrossEncoder()

    cost = score(
        cross_encoder_scorer(model, LIMITS), [item], {FULL: {"q": set(texts)}}, Console(quiet=True)
    )

    alone = {
        doc: OverlapCrossEncoder().score(model.tokenizer.encode([(item.text, text)]))[0]
        for doc, text in texts.items()
    }
    assert item.scores[FULL] == alone
    assert len(model.lengths) > 1
    for lengths in model.lengths:
        assert len(lengths) <= LIMITS.max_items
        assert len(lengths) == 1 or len(lengths) * max(lengths) <= LIMITS.max_padded_tokens
    flat = [length for lengths in model.lengths for length in lengths]
    assert flat == sorted(flat)
    assert FULL in cost.cpu_ms
