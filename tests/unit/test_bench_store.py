"""The store benchmark on a small corpus: real LanceDB, real index, sane numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from rankstream.retrieval.ann import ANN_PARAMS, AnnParams
from rankstream.workers.tools.bench_store import (
    StoreBenchRow,
    render_table,
    run_store_bench,
    synthetic_corpus,
    synthetic_queries,
)


def test_small_bench_rows_are_sane(tmp_path: Path) -> None:
    seen: list[StoreBenchRow] = []
    small = AnnParams(ANN_PARAMS.index_type, partition_rows=256, nprobes=4)
    rows = run_store_bench(
        [2_000], queries=20, k=50, workdir=tmp_path, on_row=seen.append, params=[small]
    )
    assert rows == seen
    assert [r.index_type for r in rows] == ["exact", small.index_type]
    exact, ann = rows
    # LanceDB's exact search agrees with numpy's brute force, and is its own ground truth.
    assert exact.exact_recall == ann.exact_recall
    assert exact.exact_recall >= 0.99
    assert exact.recall_at_100 == exact.exact_recall
    assert exact.build_s == 0.0
    assert "partitions=8" in ann.params
    assert "nprobes=4" in ann.params
    for row in rows:
        assert row.vectors == 2_000
        assert 0.0 <= row.recall_at_100 <= 1.0
        assert 0.0 < row.p50_ms <= row.p99_ms
        assert row.exact_p50_ms == exact.p50_ms
    assert ann.build_s > 0.0
    assert ann.recall_at_100 > 0.5  # clustered data: a real index finds most neighbours

    console = Console(width=200, record=True)
    console.print(render_table(rows, k=50))
    text = console.export_text()
    assert "recall@50" in text
    assert "2,000" in text


def test_search_only_variants_share_one_build(tmp_path: Path) -> None:
    variants = [
        AnnParams("IVF_SQ", partition_rows=256, nprobes=n, refine_factor=r)
        for n, r in ((2, None), (8, 2))
    ]
    rows = run_store_bench([1_000], queries=10, k=20, workdir=tmp_path, params=variants)
    _, few, many = rows
    assert few.build_s == many.build_s
    assert many.recall_at_100 >= few.recall_at_100


def test_synthetic_vectors_are_deterministic_normalised_and_clustered() -> None:
    first = np.concatenate(list(synthetic_corpus(3_000, dimension=64, seed=3, chunk=1_000)))
    again = np.concatenate(list(synthetic_corpus(3_000, dimension=64, seed=3, chunk=1_000)))
    assert first.shape == (3_000, 64)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    queries = synthetic_queries(50, dimension=64, seed=3)
    assert not np.isin(queries, first).all(axis=1).any()
    # Not isotropic noise: each query's nearest document is far closer than a typical one,
    # and a typical pair shares the common direction (cosine ~0.12, as in real embeddings).
    similarities = queries @ first.T
    typical = float(np.median(similarities))
    assert 0.05 < typical < 0.25
    assert float(np.median(similarities.max(axis=1))) > typical + 0.3
