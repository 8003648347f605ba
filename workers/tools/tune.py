"""`rankstream tune DATA`: find the plan where the second stage pays for itself on this
collection, prove it on held-out queries, and write it as a profile the workers serve.

1. Evidence (`tune_evidence`): every query's dense and BM25 lists, and each candidate the
   plan space can rerank scored once per token budget by the real model.
2. Plan space: first stages (`dense`, `bm25`, `hybrid` by rank fusion, `hybrid~W` with W
   fitted), then, over whichever first stage serves it best on the tuning queries (the
   list best to rerank is not always the best to show), one stage `SCORER@D/BUDGET~I` for
   every depth and budget (I fitted, or none), `SCORER@auto/BUDGET` (its depth policy fitted, as
   `calibrate-depth` does), and cascades of a cheap budget at the deepest depth followed by
   the scorer's fullest budget at each shallower depth (both weights fitted). As a
   reference, `dense+SCORER@D` with no fitting at all, as most users would run it.
3. Fitting and choosing on tuning queries only: a collection's `train` split, else its
   `dev` split (held out: its `test` split, else `dev`), or, with neither beside the
   held-out split, k-fold cross-validation over the held-out split's queries (each fold's
   figures come from weights and a choice made on the other folds). Every plan is
   computed from the evidence (`simulate`), so fitting a weight costs no model call.
4. The choice: the plan with the best tuning nDCG@10 whose estimated cost per query (CPU ms,
   and p95 wall ms at one query at a time) is within the bounds; costs are the measured
   retrieval costs plus the plan's pairs at the measured cost per pair of each budget.
5. Output: `profile.json` (rankstream.planning.profile), `report.md` and `report.json`
   (every plan tried: held-out quality and cost, the Pareto frontier, the choice, the best
   plan without a rerank stage and the p-value of each plan against it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console

from rankstream.config import Settings
from rankstream.models.registry import load_embedder
from rankstream.planning.adaptive_depth import DepthPolicy, retrieval_features
from rankstream.planning.profile import Profile
from rankstream.ranking import stage_order
from rankstream.retrieval.fusion import fuse, overlap_at_10
from rankstream.wire.contract import AUTO, RerankStage
from rankstream.wire.pipeline import PipelineSpec
from rankstream.workers.tools.calibrate import CalibrationOptions, Observed, fit_policy
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.evaluation import (
    Qrels,
    ndcg_at_10,
    paired_randomization_p_value,
    read_qrels,
    read_queries,
)
from rankstream.workers.tools.indexing import ensure_indexed
from rankstream.workers.tools.provenance import trained_texts
from rankstream.workers.tools.tune_evidence import (
    FULL,
    Budget,
    QueryEvidence,
    QueryScorer,
    ScoringCost,
    check_scorer,
    query_scorer,
    retrieve,
    score,
    unscored,
)
from rankstream.workers.tools.tune_time import affordable, ms_per_document, query_ms

FUSION_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
BLEND_WEIGHTS: tuple[float | None, ...] = (None, *(round(0.1 * i, 1) for i in range(9, 0, -1)))
RESULTS = 100  # ranked per query, as `eval` asks for
FIRST_STAGES = ("dense", "bm25", "hybrid", "hybrid~W")
TUNED = "tuned"  # a template's first stage: the best first stage fitted on the same queries
SINGLE_LISTS = ("dense", "bm25")
SIGNIFICANCE = 0.05
INNER_FOLDS = 5  # cross-validation inside the tuning queries, for choosing
CALIBRATION_QUERIES = 3  # scored first under `--max-minutes`, for what a document costs


@dataclass(frozen=True)
class TuneOptions:
    """What `rankstream tune` searches and under which bounds.

    Args:
        data_dir: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
        out: the folder for profile.json, report.md and report.json.
        max_cpu_ms: the most CPU milliseconds a query may cost (None: no bound).
        max_p95_ms: the most p95 wall milliseconds a query may take, one at a time (None: no
            bound).
        limit: tune on at most this many queries (the tuning split's first, or, without one,
            the first of all judged queries).
        test_limit: with a tuning split, report on at most this many held-out queries.
        folds: cross-validation folds where there is no tuning split.
        relevance_threshold: grade that counts as relevant for binary metrics.
        depths: rerank depths to try (the deepest also bounds what is scored).
        budgets: token budgets to try, as the grammar writes them after the depth:
            `/best128`, `/doc128`, `/maxp128`, or `full` (what max_length leaves).
        scorer: the rerank scorer to tune (`ce`, `ce-fp32`, `student`, `maxsim`, ...;
            `maxsim` with the budget `full` only).
        fusion_depth: hits of each list hybrid search fuses (the workers' default: 100).
        tuning_split: the qrels split fitted on (None: `train`, else `dev`, else k folds of
            the held-out split); never the held-out split.
        held_out_split: the qrels split measured on (None: `test`, else `dev`).
        max_minutes: about how long scoring may take; the query lists are cut from their
            end to fit (`tune_time`; None: every query is scored).
    """

    data_dir: Path
    out: Path
    max_cpu_ms: float | None = None
    max_p95_ms: float | None = None
    limit: int | None = None
    test_limit: int | None = None
    folds: int = 5
    relevance_threshold: int = 1
    depths: tuple[int, ...] = (10, 20, 30)
    budgets: tuple[str, ...] = ("/best128", "/doc128", "/doc256")
    scorer: str = "ce"
    fusion_depth: int = 100
    tuning_split: str | None = None
    held_out_split: str | None = None
    max_minutes: float | None = None


@dataclass(frozen=True)
class StageShape:
    depth: int | Literal["auto"]
    budget: str
    blend: bool  # whether the stage's interpolation weight is fitted


@dataclass(frozen=True)
class Template:
    """Plans that differ only in the weights fitting chooses."""

    first: str  # one of FIRST_STAGES, or TUNED
    stages: tuple[StageShape, ...] = ()

    @property
    def name(self) -> str:
        stages = [
            f"@{s.depth}{Budget(s.budget).suffix}{'~I' if s.blend else ''}" for s in self.stages
        ]
        return self.first + ("+" + ">".join(stages) if stages else "")


@dataclass(frozen=True)
class Fitted:
    """A template with its weights: the concrete pipeline (and depth policy)."""

    template: Template
    spec: PipelineSpec
    policy: DepthPolicy | None
    tuning: dict[str, float]  # query -> nDCG@10 on the queries it was fitted on
    # query -> nDCG@10 with weights fitted on the other inner folds of the same queries
    validated: dict[str, float] | None = None

    @property
    def tuning_ndcg(self) -> float:
        return float(np.mean(list(self.tuning.values())))

    @property
    def judged(self) -> dict[str, float]:
        """What choices read: the cross-validated figures where there are any (a fitted
        weight flatters the queries it was fitted on), else the tuning ones."""
        return self.validated if self.validated is not None else self.tuning

    @property
    def judged_ndcg(self) -> float:
        return float(np.mean(list(self.judged.values())))


def pays_off(richer: Fitted, simpler: Fitted) -> bool:
    """Whether `richer` beats `simpler` on the tuning queries by more than chance, as
    cross-validated there: a higher mean nDCG@10 and p < SIGNIFICANCE (paired randomisation
    test). A tune adds fusion or a rerank stage only then, so that what it serves does not
    lose to its own input on queries it has not seen."""
    if richer.judged_ndcg <= simpler.judged_ndcg:
        return False
    queries = list(simpler.judged)
    p_value = paired_randomization_p_value(
        [richer.judged[q] for q in queries], [simpler.judged[q] for q in queries]
    )
    return p_value < SIGNIFICANCE


@dataclass
class Measured:
    """A template's held-out figures (per query) and cost estimates."""

    template: Template
    fitted: Fitted  # fitted on all tuning queries (what the profile would serve)
    held_out: dict[str, float] = field(default_factory=dict)  # query -> nDCG@10
    pairs: list[int] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)

    @property
    def ndcg(self) -> float:
        return float(np.mean(list(self.held_out.values())))

    @property
    def reranks(self) -> bool:
        return bool(self.template.stages)


@dataclass(frozen=True)
class Folds:
    """Tuning and held-out queries: one (train, test) pair, or k cross-validation folds."""

    pairs: list[tuple[list[str], list[str]]]
    tuning: list[str]  # what the profile is fitted on
    how: str

    @property
    def queries(self) -> list[str]:
        """Every query tuned on or held out, once, tuning queries first."""
        held_out = [q for _, part in self.pairs for q in part]
        return list(dict.fromkeys(self.tuning + held_out))

    def noting(self, remark: str) -> Folds:
        return dataclasses.replace(self, how=f"{self.how}; {remark}")


class Simulator:
    """Computes any concrete plan's ranking of a query from its evidence, as the workers
    would rank it (the same fusion, the same stage order)."""

    def __init__(self, evidence: Sequence[QueryEvidence], qrels: Qrels, options: TuneOptions):
        self.evidence = {item.query_id: item for item in evidence}
        self.qrels, self.options = qrels, options
        self.cost = ScoringCost()

    def first_order(self, spec: PipelineSpec, item: QueryEvidence) -> list[tuple[str, float]]:
        if spec.mode == "dense":
            return list(item.dense)
        if spec.mode == "bm25":
            return list(item.bm25)
        depth = self.options.fusion_depth
        weight = spec.fusion_weight
        if weight is None:
            return fuse(item.dense[:depth], item.bm25[:depth])
        return fuse(item.dense[:depth], item.bm25[:depth], "convex", weight, 1 - weight)

    def run(
        self, spec: PipelineSpec, policy: DepthPolicy | None, item: QueryEvidence
    ) -> tuple[list[str], int]:
        """(the ranking, the pairs it cost)."""
        order = self.first_order(spec, item)
        pairs = 0
        first_depth: int | None = None
        for stage in spec.stages:
            depth = self._depth(stage, policy, item, spec, first_depth)
            first_depth = depth if first_depth is None else first_depth
            if depth == 0:
                break
            key = _budget_key(stage)
            top = order[:depth]
            model = [item.scores[key][doc] for doc, _ in top]
            pairs += sum(item.pairs[key][doc] for doc, _ in top)
            ranked = stage_order([s for _, s in top], model, stage.interpolate)
            order = [(top[i][0], final) for i, final in ranked] + order[depth:]
        ignore = item.query_id
        return [doc for doc, _ in order if doc != ignore][:RESULTS], pairs

    def _depth(
        self,
        stage: RerankStage,
        policy: DepthPolicy | None,
        item: QueryEvidence,
        spec: PipelineSpec,
        first_depth: int | None,
    ) -> int:
        if stage.depth == AUTO:
            assert policy is not None
            return policy.choose(features(spec.mode, item), max(self.options.depths))[0]
        depth = int(stage.depth)
        return depth if first_depth is None else min(depth, first_depth)

    def ndcg(
        self, spec: PipelineSpec, policy: DepthPolicy | None, query_ids: Sequence[str]
    ) -> dict[str, float]:
        run = {qid: self.run(spec, policy, self.evidence[qid])[0] for qid in query_ids}
        return ndcg_at_10({qid: self.qrels[qid] for qid in query_ids}, run)

    def costs(
        self, spec: PipelineSpec, policy: DepthPolicy | None, query_ids: Sequence[str]
    ) -> tuple[list[int], list[float], list[float]]:
        """Per query: pairs, estimated CPU ms, estimated wall ms (one query at a time)."""
        pairs, cpu, wall = [], [], []
        for qid in query_ids:
            item = self.evidence[qid]
            _, n = self.run(spec, policy, item)
            per_pair_cpu, per_pair_wall = self._pair_cost(spec)
            pairs.append(n)
            cpu.append(_retrieval_ms(spec.mode, item.cpu_ms, concurrent=False) + n * per_pair_cpu)
            wall.append(_retrieval_ms(spec.mode, item.wall_ms, concurrent=True) + n * per_pair_wall)
        return pairs, cpu, wall

    def _pair_cost(self, spec: PipelineSpec) -> tuple[float, float]:
        """The cost of a pair of the plan's costliest budget (a cascade's pairs are counted
        at it: an upper bound)."""
        keys = [_budget_key(stage) for stage in spec.stages] or [FULL]
        cpu = max((self.cost.cpu_ms.get(k, 0.0) for k in keys), default=0.0)
        wall = max((self.cost.wall_ms.get(k, 0.0) for k in keys), default=0.0)
        return cpu, wall


def features(mode: str, item: QueryEvidence) -> dict[str, float]:
    """The confidence features a `mode` search reports (as the retrieval worker reads them)."""
    dense = [s for _, s in item.dense] if mode != "bm25" else []
    bm25 = [s for _, s in item.bm25] if mode != "dense" else []
    overlap = (
        overlap_at_10([d for d, _ in item.dense], [d for d, _ in item.bm25])
        if mode == "hybrid"
        else None
    )
    return retrieval_features(dense, bm25, overlap)


def _retrieval_ms(mode: str, ms: dict[str, float], concurrent: bool) -> float:
    if mode == "bm25":
        return ms["bm25"]
    if mode == "dense":
        return ms["embed"] + ms["dense"]
    both = max(ms["dense"], ms["bm25"]) if concurrent else ms["dense"] + ms["bm25"]
    return ms["embed"] + both


def _budget_key(stage: RerankStage) -> str:
    return stage.budget or FULL


class Fitter:
    """Fits a template's weights (and depth policy) on a set of queries: the weights with
    the best mean nDCG@10 there, the fewest-weight plan on ties."""

    def __init__(self, simulator: Simulator, options: TuneOptions) -> None:
        self.sim, self.options = simulator, options
        self._firsts: dict[tuple[str, ...], Fitted] = {}
        self._fits: dict[tuple[Template, tuple[str, ...]], Fitted] = {}

    def fit(self, template: Template, query_ids: Sequence[str]) -> Fitted:
        """`template` fitted on `query_ids`, with its cross-validated figures there."""
        key = (template, tuple(query_ids))
        if key not in self._fits:
            self._fits[key] = self.validate(self._fit(template, query_ids), query_ids)
        return self._fits[key]

    def validate(self, fitted: Fitted, query_ids: Sequence[str]) -> Fitted:
        """`fitted` with each query's nDCG@10 under weights fitted on the other
        INNER_FOLDS - 1 parts of `query_ids` (interleaved). A rerank template keeps the
        first stage fitted on all of them (the evidence scored its candidates only)."""
        parts = [list(query_ids[i::INNER_FOLDS]) for i in range(INNER_FOLDS)]
        validated: dict[str, float] = {}
        for part in parts:
            if not part:
                continue
            rest = [q for q in query_ids if q not in set(part)]
            first = fitted.spec.first_stage if fitted.template.stages else None
            inner = self._fit(fitted.template, rest, first) if rest else fitted
            validated.update(self.sim.ndcg(inner.spec, inner.policy, part))
        return dataclasses.replace(fitted, validated=validated)

    def _fit(
        self, template: Template, query_ids: Sequence[str], first_spec: PipelineSpec | None = None
    ) -> Fitted:
        if first_spec is not None:
            firsts = [self._scored(Template(template.first), first_spec, [], None, query_ids)]
        elif template.stages and template.first == TUNED:
            firsts = self.rerank_first_stages(query_ids)
        else:
            firsts = [self.first_stage(template.first, query_ids)]
        if not template.stages:
            return firsts[0]
        # max() keeps the first of equals: the tuned first stage, on a tie.
        fits = [self._fit_stages(template, first, query_ids) for first in firsts]
        return max(fits, key=lambda fitted: fitted.tuning_ndcg)

    def rerank_first_stages(self, query_ids: Sequence[str]) -> list[Fitted]:
        """The first stages a rerank stage may sit on: the tuned one (best for retrieval
        alone), then each of FIRST_STAGES fitted for retrieval. The best list to rerank is
        not always the best list to show: a fusion that ranks no better at 10 can hold more
        of the relevant documents at 30."""
        found: dict[PipelineSpec, Fitted] = {}
        for name in (TUNED, *FIRST_STAGES):
            fitted = self.first_stage(name, query_ids)
            found.setdefault(fitted.spec, fitted)
        return list(found.values())

    def _fit_stages(self, template: Template, first: Fitted, query_ids: Sequence[str]) -> Fitted:
        stages: list[RerankStage] = []
        policy: DepthPolicy | None = None
        best = first
        for shape in template.stages:  # weights stage by stage, the earlier ones kept
            if shape.depth == AUTO:
                policy = self._policy(first.spec, shape, query_ids)
            tried = [
                self._scored(template, first.spec, [*stages, _stage(self.options, shape, w)],
                             policy, query_ids)
                for w in (BLEND_WEIGHTS if shape.blend else (None,))
            ]  # fmt: skip
            best = max(tried, key=lambda fitted: fitted.tuning_ndcg)
            stages = list(best.spec.stages)
        return best

    def first_stage(self, first: str, query_ids: Sequence[str]) -> Fitted:
        key = (first, *query_ids)
        if key not in self._firsts:
            self._firsts[key] = self._fit_first(first, query_ids)
        return self._firsts[key]

    def _fit_first(self, first: str, query_ids: Sequence[str]) -> Fitted:
        if first == TUNED:
            fitted = [
                self.validate(self.first_stage(name, query_ids), query_ids) for name in FIRST_STAGES
            ]
            return simplest_that_pays(fitted)
        if first == "hybrid~W":
            specs = [PipelineSpec("hybrid", (), w) for w in FUSION_WEIGHTS]
        else:
            specs = [PipelineSpec.parse(first)]
        scored = [self._scored(Template(first), spec, [], None, query_ids) for spec in specs]
        return max(scored, key=lambda f: f.tuning_ndcg)

    def _scored(
        self,
        template: Template,
        first: PipelineSpec,
        stages: list[RerankStage],
        policy: DepthPolicy | None,
        query_ids: Sequence[str],
    ) -> Fitted:
        spec = PipelineSpec(first.mode, tuple(stages), first.fusion_weight)
        return Fitted(template, spec, policy, self.sim.ndcg(spec, policy, query_ids))

    def _policy(
        self, first: PipelineSpec, shape: StageShape, query_ids: Sequence[str]
    ) -> DepthPolicy:
        """The depth policy `calibrate-depth` would fit, from the evidence."""
        deepest = max(self.options.depths)
        key = Budget(shape.budget).key
        observed = []
        for qid in query_ids:
            item = self.sim.evidence[qid]
            order = [doc for doc, _ in self.sim.first_order(first, item) if doc != qid]
            top = [(r, doc, item.scores[key][doc]) for r, doc in enumerate(order[:deepest], 1)]
            rest = order[deepest:RESULTS]
            observed.append(Observed(qid, features(first.mode, item), top, rest))
        options = CalibrationOptions(
            data_dir=self.options.data_dir,
            out=self.options.out,
            mode=first.name,
            scorer=self.options.scorer,
            split="tuning queries",
            grid=(0, *sorted(self.options.depths)),
        )
        return fit_policy(observed, self.sim.qrels, options)


def _stage(options: TuneOptions, shape: StageShape, weight: float | None) -> RerankStage:
    budget = Budget(shape.budget).document_budget
    return RerankStage(
        scorer=options.scorer,
        depth=shape.depth,
        max_doc_tokens=budget.max_tokens,
        long_docs=budget.long_docs if budget.max_tokens is not None else None,
        interpolate=weight,
    )


def templates(options: TuneOptions) -> list[Template]:
    """The plan space (see the module docstring)."""
    depths = sorted(options.depths)
    deepest = depths[-1]
    fullest = _fullest(options.budgets)
    cheap = [b for b in options.budgets if b != fullest]
    found = [Template(first) for first in FIRST_STAGES]
    found += [Template("dense", (StageShape(deepest, fullest, blend=False),))]
    found += [
        Template(TUNED, (StageShape(depth, budget, blend=True),))
        for budget in options.budgets
        for depth in depths
    ]
    found += [Template(TUNED, (StageShape(AUTO, b, blend=False),)) for b in options.budgets]
    found += [
        Template(
            TUNED,
            (
                StageShape(deepest, budget, blend=True),
                StageShape(depth, fullest, blend=True),
            ),
        )
        for budget in cheap
        for depth in depths[:-1]
    ]
    return found


def _fullest(budgets: Sequence[str]) -> str:
    """The budget that gives a document the most tokens (FULL above any number)."""
    return max(budgets, key=lambda b: 10**9 if b == FULL else int("".join(filter(str.isdigit, b))))


def measure(fitter: Fitter, template: Template, folds: Folds) -> Measured:
    """`template` fitted on each fold's tuning queries and measured on its held-out ones."""
    measured = Measured(template, fitter.fit(template, folds.tuning))
    for tuning, held_out in folds.pairs:
        fitted = fitter.fit(template, tuning)
        measured.held_out.update(fitter.sim.ndcg(fitted.spec, fitted.policy, held_out))
        pairs, cpu, wall = fitter.sim.costs(fitted.spec, fitted.policy, held_out)
        measured.pairs += pairs
        measured.cpu_ms += cpu
        measured.wall_ms += wall
    return measured


@dataclass(frozen=True)
class Bounds:
    max_cpu_ms: float | None
    max_p95_ms: float | None

    def broken(self, cpu_ms: Sequence[float], wall_ms: Sequence[float]) -> list[str]:
        """The bounds a plan of these per-query costs breaks (empty: it fits)."""
        broken = []
        if self.max_cpu_ms is not None and float(np.mean(cpu_ms)) > self.max_cpu_ms:
            broken.append(f"--max-cpu-ms {self.max_cpu_ms:g}")
        if self.max_p95_ms is not None and float(np.percentile(wall_ms, 95)) > self.max_p95_ms:
            broken.append(f"--max-p95-ms {self.max_p95_ms:g}")
        return broken


def choose(
    fitter: Fitter, candidates: Sequence[Measured], bounds: Bounds, tuning: Sequence[str]
) -> Measured:
    """The plan with the best tuning nDCG@10 whose cost on the tuning queries fits the
    bounds (a plan without a rerank stage always fits: it is the floor); fusion and a rerank
    stage only where they pay off (`pays_off`) against the plan without them."""

    def fits(m: Measured) -> bool:
        _, cpu, wall = fitter.sim.costs(m.fitted.spec, m.fitted.policy, tuning)
        return not m.reranks or not bounds.broken(cpu, wall)

    feasible = [m for m in candidates if fits(m)]
    floor_fit = simplest_that_pays([m.fitted for m in feasible if not m.reranks])
    floor = next(m for m in feasible if m.fitted is floor_fit)
    best = max(feasible, key=lambda m: m.fitted.judged_ndcg)
    return best if best.reranks and pays_off(best.fitted, floor.fitted) else floor


def simplest_that_pays(first_stages: Sequence[Fitted]) -> Fitted:
    """The best single list, unless the best fused one pays off against it."""
    single = max(
        (f for f in first_stages if f.spec.mode in SINGLE_LISTS), key=lambda f: f.judged_ndcg
    )
    fused = [f for f in first_stages if f.spec.mode not in SINGLE_LISTS]
    if not fused:
        return single
    best_fused = max(fused, key=lambda f: f.judged_ndcg)
    return best_fused if pays_off(best_fused, single) else single


def held_out_choice(
    fitter: Fitter, candidates: Sequence[Measured], bounds: Bounds, folds: Folds
) -> dict[str, float]:
    """The tune itself measured on held-out queries: on each fold, the plan chosen from
    that fold's tuning queries alone, scored on its held-out ones."""
    scores: dict[str, float] = {}
    for tuning, held_out in folds.pairs:
        fold_fits = [Measured(m.template, fitter.fit(m.template, tuning)) for m in candidates]
        chosen = choose(fitter, fold_fits, bounds, tuning)
        scores.update(fitter.sim.ndcg(chosen.fitted.spec, chosen.fitted.policy, held_out))
    return scores


def pareto(measured: Sequence[Measured]) -> set[str]:
    """Templates no other beats on held-out nDCG@10 at no more CPU per query."""

    def dominated(m: Measured) -> bool:
        cost = float(np.mean(m.cpu_ms))
        return any(
            o.ndcg >= m.ndcg and float(np.mean(o.cpu_ms)) <= cost
            and (o.ndcg > m.ndcg or float(np.mean(o.cpu_ms)) < cost)
            for o in measured
        )  # fmt: skip

    return {m.template.name for m in measured if not dominated(m)}


def tune_splits(options: TuneOptions) -> tuple[str | None, str]:
    """The qrels split fitted on (None: cross-validation) and the one measured on.

    Raises UsageError when no held-out split is found, or when both name the same split."""

    def has(split: str) -> bool:
        return (options.data_dir / "qrels" / f"{split}.tsv").is_file()

    held_out = options.held_out_split or next((s for s in ("test", "dev") if has(s)), None)
    if held_out is None:
        raise UsageError(
            f"{options.data_dir} has no qrels/test.tsv or qrels/dev.tsv to measure on: name "
            "the split with --held-out-split"
        )
    tuning = options.tuning_split
    if tuning is None:
        tuning = next((s for s in ("train", "dev") if s != held_out and has(s)), None)
    if tuning == held_out:
        raise UsageError(
            f"--tuning-split and the held-out split are both {held_out!r}: a figure measured "
            "on the queries it was fitted on is not held out"
        )
    return tuning, held_out


def make_folds(options: TuneOptions, queries: dict[str, str]) -> tuple[Folds, Qrels]:
    """The tuning split and the held-out split when the collection has both (a query judged
    in both is only tuned on); k folds over the held-out split's judged queries (shuffled
    with a fixed seed) when it has no tuning split."""
    tuning_split, held_out_split = tune_splits(options)
    test = read_qrels(options.data_dir, held_out_split)
    if tuning_split is not None:
        train = read_qrels(options.data_dir, tuning_split)
        tuning = [q for q in queries if q in train][: options.limit]
        held_out = [q for q in queries if q in test and q not in train][: options.test_limit]
        if not tuning or not held_out:
            raise UsageError(
                f"{options.data_dir}: no judged query in {tuning_split!r} or none left in "
                f"{held_out_split!r} (queries judged in both are only tuned on)"
            )
        how = (
            f"fitted on {len(tuning)} {tuning_split} queries, measured on {len(held_out)} "
            f"{held_out_split} queries"
        )
        return Folds([(tuning, held_out)], tuning, how), {**test, **train}
    judged = [q for q in queries if q in test][: options.limit]
    if len(judged) < options.folds:
        raise UsageError(f"{len(judged)} judged queries cannot make {options.folds} folds")
    shuffled = random.Random(0).sample(judged, len(judged))
    parts = [shuffled[i :: options.folds] for i in range(options.folds)]
    pairs = [([q for p in parts if p is not part for q in p], part) for part in parts]
    how = (
        f"{options.folds}-fold cross-validation over {len(judged)} {held_out_split} queries "
        "(no tuning split): "
        "each held-out figure comes from weights and choices fitted on the other folds"
    )
    return Folds(pairs, judged, how), test


def run_tune(settings: Settings, options: TuneOptions, console: Console) -> Path:
    """Evidence, fitting, choice, profile and report; returns the report's path."""
    started = time.perf_counter()
    every_query = read_queries(options.data_dir)
    scorer_model = check_scorer(settings, options.scorer, options.budgets)
    seen = trained_texts(scorer_model)
    queries = {q: text for q, text in every_query.items() if text not in seen}
    folds, qrels = make_folds(options, queries)
    settings = ensure_indexed(settings, options.data_dir, console)
    scoring = query_scorer(settings, options.scorer, options.budgets)
    depth = max(options.fusion_depth, max(options.depths), RESULTS)
    asked = {q: queries[q] for q in folds.queries}
    evidence = asyncio.run(retrieve(settings, load_embedder(settings), asked, depth, console))
    cost = ScoringCost()
    with scoring as scorer:
        if options.max_minutes:
            folds = within_time(scorer, evidence, folds, qrels, cost, options, console)
            evidence = [item for item in evidence if item.query_id in folds.queries]
        simulator = Simulator(evidence, qrels, options)
        fitter = Fitter(simulator, options)
        simulator.cost = score(scorer, evidence, wanted(fitter, folds, options), console, cost)
    if left_out := len(every_query) - len(queries):
        folds = folds.noting(f"{left_out} queries its scorer was trained on left out")
    with console.status("fitting and measuring every plan"):
        measured = [measure(fitter, template, folds) for template in templates(options)]
        bounds = Bounds(options.max_cpu_ms, options.max_p95_ms)
        chosen = choose(fitter, measured, bounds, folds.tuning)
        procedure = held_out_choice(fitter, measured, bounds, folds)
    models = {"embedder_model": settings.embedder_model, "scorer_model": scorer_model}
    report = TuneReport(options, folds, measured, chosen, procedure, fitter, bounds,
                        time.perf_counter() - started, models)  # fmt: skip
    return report.write()


def within_time(
    scorer: QueryScorer,
    evidence: Sequence[QueryEvidence],
    folds: Folds,
    qrels: Qrels,
    cost: ScoringCost,
    options: TuneOptions,
    console: Console,
) -> Folds:
    """The folds cut so that scoring takes about `options.max_minutes` (`tune_time`).

    Scores the first few held-out queries first (into `evidence` and `cost`), for the cost
    of a document under each budget."""
    assert options.max_minutes is not None
    todo = wanted(Fitter(Simulator(evidence, qrels, options), options), folds, options)
    cross_validated = len(folds.pairs) > 1
    held_out = folds.tuning if cross_validated else folds.pairs[0][1]
    by_id = {item.query_id: item for item in evidence}
    sample = [by_id[q] for q in held_out[:CALIBRATION_QUERIES]]
    score(scorer, sample, todo, console, cost)
    pairs_per_document = {
        key: sum(sum(item.pairs.get(key, {}).values()) for item in sample)
        / max(1, sum(len(item.pairs.get(key, {})) for item in sample))
        for key in todo
    }
    per_document = ms_per_document(cost.wall_ms, pairs_per_document)

    def estimates(query_ids: Sequence[str]) -> list[float]:
        return [query_ms({key: len(unscored(by_id[q], key, todo[key].get(q, set())))
                          for key in todo}, per_document) for q in query_ids]  # fmt: skip

    held_out_ms = None if cross_validated else estimates(held_out)
    at_least = options.folds if cross_validated else 0
    fit = affordable(estimates(folds.tuning), held_out_ms, options.max_minutes, at_least)
    if not fit.cuts(len(folds.tuning), len(held_out)):
        return folds
    console.print(
        f"scoring every query would take about {fit.all_minutes:.1f} min: cut to fit "
        f"--max-minutes {options.max_minutes:g} (--max-minutes 0: no cut)"
    )
    smaller = dataclasses.replace(options, limit=fit.tuning, test_limit=fit.held_out)
    cut, _ = make_folds(smaller, {q: by_id[q].text for q in by_id})  # k folds: test_limit unread
    return cut.noting(
        f"cut to fit --max-minutes {options.max_minutes:g} "
        f"(about {fit.all_minutes:.1f} min to score all {len(folds.queries)} queries)"
    )


def wanted(fitter: Fitter, folds: Folds, options: TuneOptions) -> dict[str, dict[str, set[str]]]:
    """What to score: under every budget, the deepest depth of every first stage a fit can
    choose (on any fold, or on all tuning queries); under the fullest, dense's too (the
    reference plan)."""
    deepest = max(options.depths)
    tunings = [tuning for tuning, _ in folds.pairs] + [folds.tuning]
    firsts = {first.spec for q in tunings for first in fitter.rerank_first_stages(q)}
    sim = fitter.sim
    tops = {
        qid: {doc for spec in firsts for doc, _ in sim.first_order(spec, item)[: deepest + 1]}
        for qid, item in sim.evidence.items()
    }
    found = {budget: {qid: set(docs) for qid, docs in tops.items()} for budget in options.budgets}
    for qid, item in sim.evidence.items():
        found[_fullest(options.budgets)][qid] |= {doc for doc, _ in item.dense[: deepest + 1]}
    return found


@dataclass
class TuneReport:
    """The profile and the report of one tune."""

    options: TuneOptions
    folds: Folds
    measured: list[Measured]
    chosen: Measured
    procedure: dict[str, float]  # held-out nDCG@10 of the tune's own choice, per query
    fitter: Fitter
    bounds: Bounds
    wall_s: float
    models: dict[str, str]  # embedder_model, scorer_model: what the figures were fitted with

    @property
    def floor(self) -> Measured:
        """The best plan without a rerank stage, on held-out queries."""
        return max((m for m in self.measured if not m.reranks), key=lambda m: m.ndcg)

    def write(self) -> Path:
        out = self.options.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(self.profile().to_json(), encoding="utf-8")
        rows = self.rows()
        document = {"about": self.about(), "plans": rows}
        (out / "report.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        (out / "report.md").write_text(self.markdown(rows), encoding="utf-8")
        return out / "report.md"

    def profile(self) -> Profile:
        fitted = self.chosen.fitted
        policy = json.loads(fitted.policy.to_json()) if fitted.policy is not None else None
        return Profile(pipeline=fitted.spec.name, depth_policy=policy, about=self.about())

    @property
    def unbounded(self) -> Measured:
        """The best plan on tuning queries, whatever it costs."""
        return max(self.measured, key=lambda m: m.fitted.judged_ndcg)

    def stopped_by(self) -> list[str]:
        """The bounds that kept the tune from the best plan on tuning queries."""
        best = self.unbounded
        if best is self.chosen:
            return []
        _, cpu, wall = self.fitter.sim.costs(
            best.fitted.spec, best.fitted.policy, self.folds.tuning
        )
        return self.bounds.broken(cpu, wall)

    def about(self) -> dict[str, object]:
        return {
            "collection": self.options.data_dir.resolve().name,
            "fitted_on": self.folds.how,
            "scorer": self.options.scorer,
            **self.models,
            "max_cpu_ms": self.options.max_cpu_ms,
            "max_p95_ms": self.options.max_p95_ms,
            "chosen": self.chosen.fitted.spec.name,
            "chosen_held_out_ndcg10": round(self.chosen.ndcg, 4),
            "tune_held_out_ndcg10": round(float(np.mean(list(self.procedure.values()))), 4),
            "best_without_rerank": self.floor.fitted.spec.name,
            "best_without_rerank_held_out_ndcg10": round(self.floor.ndcg, 4),
            "stopped_by": self.stopped_by(),
            "best_unbounded": self.unbounded.fitted.spec.name,
            "cost_per_pair_cpu_ms": {
                k: round(v, 2) for k, v in self.fitter.sim.cost.cpu_ms.items()
            },
            "wall_s": round(self.wall_s, 1),
        }

    def rows(self) -> list[dict[str, object]]:
        frontier = pareto(self.measured)
        floor = self.floor
        queries = list(floor.held_out)
        return [
            {
                "template": m.template.name,
                "plan": m.fitted.spec.name,
                "tuning_ndcg10": round(m.fitted.judged_ndcg, 4),
                "held_out_ndcg10": round(m.ndcg, 4),
                "pairs_per_query": round(float(np.mean(m.pairs)), 1),
                "cpu_ms_per_query": round(float(np.mean(m.cpu_ms)), 1),
                "p95_ms": round(float(np.percentile(m.wall_ms, 95)), 1),
                "p_vs_best_without_rerank": round(
                    paired_randomization_p_value(
                        [m.held_out[q] for q in queries], [floor.held_out[q] for q in queries]
                    ),
                    4,
                ),
                "pareto": m.template.name in frontier,
                "chosen": m is self.chosen,
            }
            for m in sorted(self.measured, key=lambda m: -m.ndcg)
        ]

    def markdown(self, rows: Sequence[dict[str, object]]) -> str:
        about = self.about()
        lines = [
            f"# rankstream tune: {about['collection']}",
            "",
            f"{self.folds.how}. Chosen: **{about['chosen']}** (held-out nDCG@10 "
            f"{about['chosen_held_out_ndcg10']}; the tune's own choice, made on tuning "
            f"queries only, scores {about['tune_held_out_ndcg10']} held out). Best plan "
            f"without a rerank stage: {about['best_without_rerank']} "
            f"({about['best_without_rerank_held_out_ndcg10']}).",
            "",
        ]
        stopped_by = self.stopped_by()
        if stopped_by:
            lines += [f"The best plan on tuning queries, {about['best_unbounded']}, breaks "
                      f"{', '.join(stopped_by)}.", ""]  # fmt: skip
        lines += [
            "Costs are estimates: measured retrieval costs plus each plan's pairs at the "
            "measured cost per pair (CPU ms per pair: "
            f"{about['cost_per_pair_cpu_ms']}); p95 is one query at a time. "
            f"The tune took {about['wall_s']} s.",
            "",
            "Each template is searched as written (`tuned` is the first stage the fit picks, "
            "`~I` a fitted interpolation weight) and fitted on all tuning queries into the "
            "plan beside it; two templates can fit into one plan.",
            "",
            "| plan (fitted on all tuning queries) | template | held-out nDCG@10 | tuning "
            "nDCG@10 (cross-validated) | pairs/query | CPU ms/query | p95 ms | p vs best "
            "without rerank | Pareto | chosen |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| `{row['plan']}` | `{row['template']}` | {row['held_out_ndcg10']} | "
                f"{row['tuning_ndcg10']} | "
                f"{row['pairs_per_query']} | {row['cpu_ms_per_query']} | {row['p95_ms']} | "
                f"{row['p_vs_best_without_rerank']} | {'yes' if row['pareto'] else ''} | "
                f"{'**chosen**' if row['chosen'] else ''} |"
            )
        return "\n".join(lines) + "\n"
