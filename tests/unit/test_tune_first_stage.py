"""The first stage a tuned rerank stage sits on is the one that serves the reranked plan
best, which need not be the best list to show: computed from hand-made evidence."""

from __future__ import annotations

from pathlib import Path

from rankstream.workers.tools.tune import (
    TUNED,
    Fitter,
    Simulator,
    StageShape,
    Template,
    TuneOptions,
)
from rankstream.workers.tools.tune_evidence import FULL, QueryEvidence

CROSS_ENCODER = {"r1": 5.0, "r2": 4.0, "x": 1.0, "y": 0.0, "z": -1.0}
COSTS = {"embed": 1.0, "dense": 1.0, "bm25": 1.0}


def evidence(query_id: str) -> QueryEvidence:
    """Dense shows r1 first but holds r2 at 4; BM25 has r2 second and r1 last, so their
    reciprocal rank fusion ranks worse than dense but holds both relevant documents in its
    top 2."""
    return QueryEvidence(
        query_id, "a question",
        dense=[("r1", 0.9), ("x", 0.8), ("y", 0.7), ("r2", 0.6), ("z", 0.5)],
        bm25=[("x", 9.0), ("r2", 8.0), ("z", 7.0), ("y", 6.0), ("r1", 5.0)],
        cpu_ms=dict(COSTS), wall_ms=dict(COSTS),
        scores={FULL: dict(CROSS_ENCODER)}, pairs={FULL: dict.fromkeys(CROSS_ENCODER, 1)},
    )  # fmt: skip


def test_a_rerank_stage_sits_on_the_list_that_holds_the_relevant_documents_within_its_depth(
    tmp_path: Path,
) -> None:
    queries = [f"q{i}" for i in range(10)]
    qrels = {q: {"r1": 1, "r2": 1} for q in queries}
    options = TuneOptions(data_dir=tmp_path, out=tmp_path, depths=(2,), budgets=(FULL,))
    fitter = Fitter(Simulator([evidence(q) for q in queries], qrels, options), options)
    rerank_two = Template(TUNED, (StageShape(2, FULL, blend=False),))

    shown = fitter.first_stage(TUNED, queries)
    reranked = fitter.fit(rerank_two, queries)
    over_dense = fitter.fit(Template("dense", rerank_two.stages), queries)

    assert shown.spec.name == "dense"  # the best list to show ...
    assert reranked.spec.name == "hybrid+ce@2"  # ... is not the best to rerank two of
    assert fitter.first_stage("hybrid", queries).tuning_ndcg < shown.tuning_ndcg
    assert reranked.tuning_ndcg > over_dense.tuning_ndcg
    assert over_dense.tuning_ndcg == shown.tuning_ndcg  # ce@2 over dense changes nothing
