"""IR evaluation: BEIR queries and qrels, run files, metrics (ir-measures), significance.

The metrics themselves come from ir-measures (pytrec_eval underneath); this module only
chooses them, fills in queries a run missed, and aggregates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG
from scipy.stats import permutation_test

from rankstream.workers.tools.errors import UsageError

Qrels = dict[str, dict[str, int]]
RankedRun = dict[str, list[str]]  # query id -> document ids, best first
METRIC_NAMES = ("nDCG@10", "MRR@10", "Recall@10", "Recall@100")


def read_queries(data_dir: Path) -> dict[str, str]:
    """`queries.jsonl`: one JSON object a line with `_id` and `text` (other keys ignored).

    Raises UsageError naming the file and line of a line that is not such an object."""
    path = data_dir / "queries.jsonl"
    if not path.is_file():
        raise UsageError(f"{data_dir} has no queries.jsonl (BEIR layout expected)")
    queries: dict[str, str] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                queries[str(row["_id"])] = str(row["text"])
            except (ValueError, KeyError, TypeError) as error:
                raise UsageError(
                    f"{path}:{number}: not a query (a JSON object with _id and text): {error!r}"
                ) from error
    return queries


def read_qrels(data_dir: Path, split: str) -> Qrels:
    """`qrels/<split>.tsv`: BEIR's `query-id corpus-id score` rows, tab-separated, the header
    optional; TREC's four columns (`query-id iteration corpus-id grade`, any whitespace) are
    read too. Grades are kept as given (integers; `2.0` reads as 2).

    Raises UsageError naming the file and line of a row it cannot read."""
    path = data_dir / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise UsageError(f"{data_dir} has no qrels/{split}.tsv")
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            fields = line.split("\t") if line.count("\t") == 2 else line.split()
            if not fields or (number == 1 and not _is_number(fields[-1])):
                continue  # blank, or the header
            query_id, doc_id, grade = _judgement(fields, f"{path}:{number}")
            qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def _judgement(fields: Sequence[str], where: str) -> tuple[str, str, int]:
    """(query id, document id, grade) of one qrels row."""
    if len(fields) not in (3, 4):
        raise UsageError(
            f"{where}: {len(fields)} columns; expected query-id, corpus-id, score (BEIR) or "
            "query-id, iteration, corpus-id, grade (TREC)"
        )
    query_id, doc_id, grade = fields[0], fields[-2], fields[-1]
    if not _is_number(grade) or not float(grade).is_integer():
        raise UsageError(f"{where}: the grade {grade.strip()!r} is not an integer")
    return query_id.strip(), doc_id.strip(), int(float(grade))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def measures(relevance_threshold: int) -> dict[str, Any]:
    """nDCG uses the graded judgments; the binary metrics count grade >= threshold."""
    return {
        "nDCG@10": nDCG @ 10,
        "MRR@10": RR(rel=relevance_threshold) @ 10,
        "Recall@10": R(rel=relevance_threshold) @ 10,
        "Recall@100": R(rel=relevance_threshold) @ 100,
    }


def as_scored_run(run: RankedRun) -> dict[str, dict[str, float]]:
    """Scores that reproduce the ranking (evaluators sort by score, not by rank)."""
    return {
        qid: {doc: float(len(docs) - i) for i, doc in enumerate(docs)} for qid, docs in run.items()
    }


def per_query_metrics(
    qrels: Qrels, run: RankedRun, relevance_threshold: int
) -> dict[str, dict[str, float]]:
    """metric name -> query id -> value, for every judged query (0 where the run has none)."""
    chosen = measures(relevance_threshold)
    names = {measure: name for name, measure in chosen.items()}
    values: dict[str, dict[str, float]] = {name: dict.fromkeys(qrels, 0.0) for name in chosen}
    judged_run = {qid: docs for qid, docs in as_scored_run(run).items() if qid in qrels}
    for metric in ir_measures.iter_calc(list(chosen.values()), qrels, judged_run):
        values[names[metric.measure]][metric.query_id] = float(metric.value)
    return values


def ndcg_at_10(qrels: Qrels, run: RankedRun) -> dict[str, float]:
    """nDCG@10 of every judged query as trec_eval's `ndcg_cut_10` computes it (linear gains,
    log2 discount, the ideal order from the judgments), without a call into it: the tune
    computes it for thousands of simulated runs. `per_query_metrics` is the reference."""
    return {qid: _ndcg_at_10(judged, run.get(qid, [])) for qid, judged in qrels.items()}


def _ndcg_at_10(judged: dict[str, int], ranking: Sequence[str]) -> float:
    discounts = 1 / np.log2(np.arange(2, 12))
    gains = [max(0, judged.get(doc, 0)) for doc in ranking[:10]]
    ideal = sorted((grade for grade in judged.values() if grade > 0), reverse=True)[:10]
    best = float(np.dot(ideal, discounts[: len(ideal)]))
    return float(np.dot(gains, discounts[: len(gains)])) / best if best > 0 else 0.0


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {name: float(np.mean(list(v.values()))) for name, v in per_query.items()}


def paired_randomization_p_value(
    treatment: Sequence[float], baseline: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided paired randomisation test of the mean per-query difference."""
    if len(treatment) != len(baseline):
        raise ValueError("paired samples need the same queries")
    if np.allclose(treatment, baseline):
        return 1.0
    result = permutation_test(
        (np.asarray(treatment), np.asarray(baseline)),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        permutation_type="samples",
        n_resamples=resamples,
        alternative="two-sided",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def write_trec_run(path: Path, run: RankedRun, run_name: str) -> None:
    """Standard six columns: qid Q0 docid rank score run_name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scored = as_scored_run(run)
    with path.open("w", encoding="utf-8") as out:
        for qid, docs in run.items():
            for rank, doc in enumerate(docs, start=1):
                out.write(f"{qid} Q0 {doc} {rank} {scored[qid][doc]:g} {run_name}\n")
