"""`rankstream calibrate-depth`: fit the depth `auto` policy on a train split.

Every query of the split goes through the running pipeline once, reranked to the largest
depth D of the grid. From each answer: the retrieval's confidence features and the
cross-encoder's score of each of the top D candidates. Reranking only the top d < D is then
simulated exactly (the top d by score, the rest in retrieval order), so every depth of the
grid is known per query from one pass. For each feature, the queries are cut into
quartiles of confidence, and each quartile gets the smallest depth whose mean nDCG@10 is
within the tolerance of depth D's in that quartile; the feature that saves the most pairs
wins. Calibrate on a train split: the split you report must not choose the policy.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.planning.adaptive_depth import DepthPolicy, DepthRule
from rankstream.ranking import stage_order
from rankstream.wire.contract import ErrorResult, RankedResult
from rankstream.wire.pipeline import PipelineSpec
from rankstream.workers.app import running_workers
from rankstream.workers.stack import local_nats
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.evaluation import Qrels, per_query_metrics, read_qrels, read_queries
from rankstream.workers.tools.indexing import ensure_indexed
from rankstream.workers.tools.progress import progress

QUANTILES = (0.75, 0.5, 0.25)  # confidence cut points, most confident first


@dataclass(frozen=True)
class CalibrationOptions:
    data_dir: Path
    out: Path
    mode: str = "hybrid"
    scorer: str = "ce"
    split: str = "train"
    grid: tuple[int, ...] = (0, 5, 10, 15, 20, 30)
    tolerance: float = 0.005
    limit: int | None = None
    concurrency: int = 8


@dataclass(frozen=True)
class Observed:
    """One query at depth D: features, and the retrieval ranks and scores of the top D."""

    query_id: str
    features: dict[str, float]
    by_retrieval: list[tuple[int, str, float]]  # (retrieval rank, doc id, rerank score)
    rest: list[str]  # documents beyond D, in retrieval order

    def ranking(self, depth: int) -> list[str]:
        """The order a stage reranking the top `depth` would leave (as the workers rank)."""
        in_order = sorted(self.by_retrieval)
        top = [doc for rank, doc, _ in in_order if rank <= depth]
        scores = [score for rank, _, score in in_order if rank <= depth]
        reranked = [top[i] for i, _ in stage_order([0.0] * len(top), scores)]
        return reranked + [doc for rank, doc, _ in in_order if rank > depth] + self.rest


async def calibrate(
    settings: Settings, options: CalibrationOptions, console: Console
) -> DepthPolicy:
    queries = read_queries(options.data_dir)
    qrels = read_qrels(options.data_dir, options.split)
    query_ids = [qid for qid in queries if qid in qrels][: options.limit]
    if not query_ids:
        raise UsageError(f"no query of {options.data_dir} has {options.split} judgments")
    deepest = max(options.grid)
    spec = PipelineSpec.parse(f"{options.mode}+{options.scorer}@{deepest}")
    settings = await asyncio.to_thread(ensure_indexed, settings, options.data_dir, console)
    observed = await _observe(settings, spec, queries, query_ids, options, console)
    policy = fit_policy(observed, qrels, options)
    options.out.write_text(policy.to_json(), encoding="utf-8")
    return policy


async def _observe(
    settings: Settings,
    spec: PipelineSpec,
    queries: dict[str, str],
    query_ids: list[str],
    options: CalibrationOptions,
    console: Console,
) -> list[Observed]:
    in_flight = asyncio.Semaphore(options.concurrency)
    deepest = max(options.grid)

    async def one(client: RankstreamClient, query_id: str) -> Observed | None:
        async with in_flight:
            request = client.request(
                queries[query_id], top_k=max(100, deepest), timeout_s=600, pipeline=spec,
                cache=False,
            )  # fmt: skip
            reply = await client.send(request)
            advance(1)
        if isinstance(reply, ErrorResult):
            console.print(f"[yellow]{query_id}: {reply.code}: {reply.message}[/yellow]")
            return None
        return _observed(query_id, reply, deepest)

    async with (
        local_nats(settings, port=None) as settings,
        running_workers(settings),
        RankstreamClient(settings) as client,
    ):
        with progress(console, f"{spec.name} on {options.split}", len(query_ids)) as advance:
            found = await asyncio.gather(*(one(client, q) for q in query_ids))
    return [o for o in found if o is not None]


def _observed(query_id: str, reply: RankedResult, deepest: int) -> Observed:
    top = [
        (doc.retrieval_rank, doc.doc_id, doc.score)
        for doc in reply.results
        if doc.retrieval_rank <= deepest
    ]
    beyond = sorted(
        (d for d in reply.results if d.retrieval_rank > deepest), key=lambda d: d.retrieval_rank
    )
    return Observed(query_id, reply.retrieval.features, top, [d.doc_id for d in beyond])


def fit_policy(
    observed: Sequence[Observed], qrels: Qrels, options: CalibrationOptions
) -> DepthPolicy:
    """The policy that saves the most pairs while every confidence quartile stays within the
    tolerance of the deepest depth's nDCG@10 (so the whole split does too)."""
    grid = sorted(options.grid)
    qrels = {o.query_id: qrels[o.query_id] for o in observed}
    ndcg = {
        depth: per_query_metrics(
            qrels, {o.query_id: o.ranking(depth) for o in observed}, relevance_threshold=1
        )["nDCG@10"]
        for depth in grid
    }
    candidates = [
        _policy_for(feature, observed, ndcg, grid, options.tolerance)
        for feature in sorted({f for o in observed for f in o.features})
    ]
    if not candidates:
        raise UsageError("the answers carry no confidence feature to calibrate on")
    best = min(candidates, key=lambda pair: pair[1])[0]
    return _described(best, observed, ndcg, grid, options)


def _policy_for(
    feature: str,
    observed: Sequence[Observed],
    ndcg: dict[int, dict[str, float]],
    grid: list[int],
    tolerance: float,
) -> tuple[DepthPolicy, float]:
    values = np.array([o.features.get(feature, 0.0) for o in observed])
    cuts = [float(np.quantile(values, q)) for q in QUANTILES]
    bounds = [float("inf"), *cuts, float("-inf")]
    rules = []
    for upper, lower in itertools.pairwise(bounds):
        members = [o.query_id for o, v in zip(observed, values, strict=True) if lower <= v < upper]
        rules.append(DepthRule(max(lower, 0.0), _smallest_depth(members, ndcg, grid, tolerance)))
    policy = DepthPolicy(feature, tuple(rules), fallback=max(grid))
    mean_depth = float(np.mean([policy.choose(o.features, max(grid))[0] for o in observed]))
    return policy, mean_depth


def _smallest_depth(
    members: list[str], ndcg: dict[int, dict[str, float]], grid: list[int], tolerance: float
) -> int:
    if not members:
        return max(grid)
    full = np.mean([ndcg[max(grid)][q] for q in members])
    for depth in grid:
        if np.mean([ndcg[depth][q] for q in members]) >= full - tolerance:
            return depth
    return max(grid)


def _described(
    policy: DepthPolicy,
    observed: Sequence[Observed],
    ndcg: dict[int, dict[str, float]],
    grid: list[int],
    options: CalibrationOptions,
) -> DepthPolicy:
    chosen = {o.query_id: policy.choose(o.features, max(grid))[0] for o in observed}
    by_policy = np.mean([ndcg[depth][qid] for qid, depth in chosen.items()])
    about = {
        "calibrated_on": f"{options.data_dir.resolve().name} {options.split}",
        "queries": len(observed),
        "pipeline": f"{options.mode}+{options.scorer}@auto",
        "grid": grid,
        "tolerance": options.tolerance,
        "ndcg10_at_deepest": round(float(np.mean(list(ndcg[max(grid)].values()))), 4),
        "ndcg10_by_policy": round(float(by_policy), 4),
        "ndcg10_by_depth": {d: round(float(np.mean(list(v.values()))), 4) for d, v in ndcg.items()},
        "mean_depth": round(float(np.mean(list(chosen.values()))), 2),
    }
    return DepthPolicy(policy.feature, policy.rules, policy.fallback, about)
