"""`rankstream bench-store`: LanceDB search at scale over synthetic clustered corpora.

For each corpus size: write the vectors into a table with the production schema, time exact
(flat) search over it, build the ANN index with the production build call, then time ANN
search through the same query function `DocumentStore.search` runs and score recall@k against
the exact results. A numpy brute force over the same vectors checks the exact search itself.

The vectors are not isotropic noise, on which every ANN index looks bad and recall means
nothing: documents hang off the leaves of a random topic tree (see the constants below),
L2-normalised, and queries are fresh draws from the same distribution.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lancedb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from rich.table import Table

from rankstream.models.base import normalise
from rankstream.retrieval.ann import ANN_PARAMS, AnnParams, build_ann_index, vector_search
from rankstream.retrieval.corpus import Document
from rankstream.retrieval.store import to_arrow
from rankstream.workers.tools.stats import percentiles

Matrix = npt.NDArray[np.float32]

BRANCHING = 8  # each node of the topic tree has this many children, down len(LEVEL_SHARES)
# levels: 8 topics, 64, 512, 4,096 and 32,768 leaves
# Squared length of each part of a document vector before normalisation: a direction every
# document shares (real embeddings are anisotropic), one offset per tree level (each node's
# scaled by a log-normal factor, so topics differ in tightness), then anisotropic noise. Two
# documents' expected cosine is the sum of the shares they have in common: 0.12 unrelated,
# 0.34 in one topic, ... 0.71 in one leaf. Fitted so that a 5,183-vector corpus has about the
# neighbour profile of SciFact under all-MiniLM-L6-v2: median cosine of the 1st/10th/100th/
# 1000th neighbour 0.68/0.56/0.39/0.19 (SciFact: 0.68/0.53/0.40/0.25), median pair 0.13
# (0.12), local intrinsic dimension at k=100 17.5 (19.6).
SHARED_SHARE = 0.12
LEVEL_SHARES = (0.22, 0.14, 0.10, 0.07, 0.06)
NOISE_SHARE = 0.29
NODE_SIGMA = 0.3
# The ANN parameters `shared/store.py` used before this benchmark chose its own (they built
# sqrt(rows) partitions, 977 at 1M is the same for practical purposes), for comparison.
PREVIOUS_PARAMS = AnnParams(
    "IVF_PQ", partition_rows=1024, num_sub_vectors=48, nprobes=20, refine_factor=None
)
WRITE_ROWS = 65_536
WARM_UP = 5


@dataclass(frozen=True)
class StoreBenchRow:
    vectors: int
    index_type: str  # "exact" where no index is built
    params: str
    build_s: float
    p50_ms: float
    p99_ms: float
    exact_p50_ms: float
    recall_at_100: float  # recall@k of this search against exact search (k is 100 by default)
    exact_recall: float  # recall@k of LanceDB's exact search against numpy's brute force


class _Mixture:
    """The topic tree that documents and queries are drawn from."""

    def __init__(self, dimension: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.dimension = dimension
        centres = np.sqrt(SHARED_SHARE) * _random_unit(rng, 1, dimension)
        weights = np.ones(1)
        for share in LEVEL_SHARES:
            nodes = len(centres) * BRANCHING
            scale = np.sqrt(share) * rng.lognormal(0.0, NODE_SIGMA, (nodes, 1)).astype(np.float32)
            centres = np.repeat(centres, BRANCHING, axis=0) + scale * _random_unit(
                rng, nodes, dimension
            )
            weights = np.repeat(weights, BRANCHING) * rng.lognormal(0.0, 0.5, nodes)
        self.centres: Matrix = centres.astype(np.float32)
        self.cumulative = np.cumsum(weights / weights.sum())  # uneven topic sizes
        # Anisotropic noise: some directions vary much more than others.
        axis_scale = rng.lognormal(0.0, 0.5, dimension)
        self.axis_scale = (axis_scale / np.sqrt(np.mean(axis_scale**2))).astype(np.float32)

    def sample(self, rng: np.random.Generator, count: int) -> Matrix:
        leaves = len(self.centres)
        leaf = np.minimum(np.searchsorted(self.cumulative, rng.random(count)), leaves - 1)
        noise = rng.standard_normal((count, self.dimension), dtype=np.float32) * self.axis_scale
        noise *= np.float32(np.sqrt(NOISE_SHARE / self.dimension))
        return normalise(self.centres[leaf] + noise)


def synthetic_corpus(
    count: int, dimension: int = 384, seed: int = 0, chunk: int = WRITE_ROWS
) -> Iterator[Matrix]:
    """`count` document vectors in chunks of `chunk` rows; the same for the same arguments."""
    mixture = _Mixture(dimension, seed)
    for index, start in enumerate(range(0, count, chunk)):
        rng = np.random.default_rng([seed, 1, index])
        yield mixture.sample(rng, min(chunk, count - start))


def synthetic_queries(count: int, dimension: int = 384, seed: int = 0) -> Matrix:
    """Query vectors from the corpus's distribution, but not in the corpus."""
    return _Mixture(dimension, seed).sample(np.random.default_rng([seed, 2]), count)


def run_store_bench(
    sizes: Sequence[int],
    dimension: int = 384,
    queries: int = 200,
    k: int = 100,
    seed: int = 0,
    workdir: Path | None = None,
    on_row: Callable[[StoreBenchRow], None] | None = None,
    params: Sequence[AnnParams] = (ANN_PARAMS,),
) -> list[StoreBenchRow]:
    """One row per size and entry of `params` (the production parameters by default), after
    an "exact" row per size (exact search against numpy, so its recall is exact_recall).

    Entries of `params` that differ only in search parameters share one index build. With a
    `workdir`, tables stay there and are reused by later runs with the same arguments."""
    if not sizes or queries < 1 or k < 1:
        raise ValueError("need at least one size, one query and k >= 1")
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="bench-store-")) if workdir is None else workdir
    rows: list[StoreBenchRow] = []

    def emit(row: StoreBenchRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    try:
        uri = str(root / "lancedb")
        db = lancedb.connect(uri)
        query_vectors = synthetic_queries(queries, dimension, seed)
        for size in sizes:
            name = f"synthetic_{size}_{dimension}d_seed{seed}"
            truth = _write_table(db, name, size, dimension, seed, query_vectors, k)
            table = db.open_table(name)
            for index in table.list_indices():  # a reused table: measure exact search again
                table.drop_index(index.name)
            exact_ms, exact_ids = _timed_search(uri, name, query_vectors, k, ANN_PARAMS)
            exact_p50 = percentiles(exact_ms)["p50"]
            exact_recall = _recall(exact_ids, truth)
            emit(
                StoreBenchRow(
                    size,
                    "exact",
                    "flat scan",
                    0.0,
                    exact_p50,
                    percentiles(exact_ms)["p99"],
                    exact_p50,
                    exact_recall,
                    exact_recall,
                )
            )
            for build, searches in _by_build(params):
                started = time.perf_counter()
                build_ann_index(table, size, build)
                build_s = time.perf_counter() - started
                for search in searches:
                    ann_ms, ann_ids = _timed_search(uri, name, query_vectors, k, search)
                    emit(
                        StoreBenchRow(
                            size,
                            search.index_type,
                            f"{search.build_params(size)} {search.search_params()}",
                            build_s,
                            percentiles(ann_ms)["p50"],
                            percentiles(ann_ms)["p99"],
                            exact_p50,
                            _recall(ann_ids, exact_ids),
                            exact_recall,
                        )
                    )
            if temporary:
                db.drop_table(name)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def render_table(rows: Sequence[StoreBenchRow], k: int = 100) -> Table:
    table = Table(title="LanceDB search over synthetic clustered vectors")
    for header in ("vectors", "index", "params", "build s", "p50 ms", "p99 ms", "exact p50 ms"):
        table.add_column(header, justify="left" if header in ("index", "params") else "right")
    table.add_column(f"recall@{k}", justify="right")
    table.add_column("exact vs numpy", justify="right")
    for row in rows:
        table.add_row(
            f"{row.vectors:,}",
            row.index_type,
            row.params,
            f"{row.build_s:.1f}",
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"{row.exact_p50_ms:.2f}",
            f"{row.recall_at_100:.4f}",
            f"{row.exact_recall:.4f}",
        )
    return table


def _write_table(
    db: lancedb.DBConnection,
    name: str,
    size: int,
    dimension: int,
    seed: int,
    query_vectors: Matrix,
    k: int,
) -> npt.NDArray[np.int64]:
    """Write the corpus as `DocumentStore` lays it out (unless a previous run did); returns
    numpy's exact top-k row numbers per query, computed along the way."""
    model = f"synthetic-clusters-{dimension}d-seed{seed}"
    reuse = name in db.table_names() and db.open_table(name).count_rows() == size
    top = _TopK(len(query_vectors), k)

    def batches() -> Iterator[pa.RecordBatch]:
        start = 0
        for vectors in synthetic_corpus(size, dimension, seed):
            top.add(query_vectors @ vectors.T, start)
            documents = [
                Document(f"d{i}", f"synthetic document {i}")
                for i in range(start, start + len(vectors))
            ]
            start += len(vectors)
            yield from to_arrow(documents, vectors, model).to_batches()

    if reuse:
        for _ in batches():
            pass
    else:
        schema = to_arrow([], np.zeros((0, dimension), np.float32), model).schema
        db.create_table(name, data=batches(), schema=schema, mode="overwrite")
    return top.ids()


class _TopK:
    """Running exact top-k (largest similarity) row numbers per query."""

    def __init__(self, queries: int, k: int) -> None:
        self.k = k
        self.scores = np.full((queries, 0), -np.inf, dtype=np.float32)
        self.rows = np.zeros((queries, 0), dtype=np.int64)

    def add(self, similarities: Matrix, start: int) -> None:
        rows = np.broadcast_to(
            np.arange(start, start + similarities.shape[1], dtype=np.int64), similarities.shape
        )
        scores = np.concatenate([self.scores, similarities], axis=1)
        rows = np.concatenate([self.rows, rows], axis=1)
        if scores.shape[1] > self.k:
            keep = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
            scores = np.take_along_axis(scores, keep, axis=1)
            rows = np.take_along_axis(rows, keep, axis=1)
        self.scores, self.rows = scores, rows

    def ids(self) -> npt.NDArray[np.int64]:
        return self.rows


def _timed_search(
    uri: str, table: str, query_vectors: Matrix, k: int, params: AnnParams
) -> tuple[list[float], npt.NDArray[np.int64]]:
    """Milliseconds per query (after WARM_UP untimed ones) and the row numbers found, through
    the query function and the async API the retrieval worker uses."""
    return asyncio.run(_timed_async_search(uri, table, query_vectors, k, params))


async def _timed_async_search(
    uri: str, table: str, query_vectors: Matrix, k: int, params: AnnParams
) -> tuple[list[float], npt.NDArray[np.int64]]:
    searched = await (await lancedb.connect_async(uri)).open_table(table)
    for vector in query_vectors[:WARM_UP]:
        await vector_search(searched, vector, k, params)
    times: list[float] = []
    found = np.full((len(query_vectors), k), -1, dtype=np.int64)
    for i, vector in enumerate(query_vectors):
        started = time.perf_counter()
        hits = await vector_search(searched, vector, k, params)
        times.append((time.perf_counter() - started) * 1000.0)
        row_numbers = [int(str(hit["id"])[1:]) for hit in hits]
        found[i, : len(row_numbers)] = row_numbers
    return times, found


def _recall(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    """Mean fraction of each truth row found (the -1 padding of short results never matches)."""
    k = truth.shape[1]
    return float(
        np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)])
    )


def _by_build(params: Sequence[AnnParams]) -> list[tuple[AnnParams, list[AnnParams]]]:
    """Group parameter sets by everything that decides the index build, in first-seen order."""
    groups: dict[AnnParams, list[AnnParams]] = {}
    for entry in params:
        key = replace(entry, nprobes=ANN_PARAMS.nprobes, refine_factor=None, ef=None)
        groups.setdefault(key, []).append(entry)
    return list(groups.items())


def _random_unit(rng: np.random.Generator, count: int, dimension: int) -> Matrix:
    return normalise(rng.standard_normal((count, dimension), dtype=np.float32))
