"""The vector index: how LanceDB's ANN index is built and searched (cosine)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lancedb
import numpy as np
from lancedb.index import HnswSq, IvfFlat, IvfPq, IvfRq, IvfSq
from lancedb.table import AsyncTable

from rankstream.models.base import Vectors

log = logging.getLogger(__name__)

AnnIndexType = Literal["IVF_PQ", "IVF_SQ", "IVF_RQ", "IVF_FLAT", "IVF_HNSW_SQ"]

# ANN index parameters, chosen with `rankstream bench-store` (synthetic clustered 384-d
# corpora, k=100; the figures and the rejected alternatives are in the README). refine=2
# re-scores 2 x limit candidates exactly, because 8-bit codes misorder near-ties; nprobes=20
# is four times what the synthetic data needs, a margin for real embeddings, which cluster
# less cleanly.
ANN_INDEX_TYPE: AnnIndexType = "IVF_SQ"
ANN_PARTITION_ROWS = 4096  # rows per IVF partition: num_partitions = ceil(rows / this)
ANN_NUM_SUB_VECTORS = 48  # IVF_PQ only: 384-d -> 8 dimensions per sub-vector
ANN_NPROBES = 20  # IVF partitions searched per query
ANN_REFINE_FACTOR: int | None = 2  # re-score refine_factor * limit candidates exactly
ANN_M = 20  # IVF_HNSW_SQ only: graph degree
ANN_EF_CONSTRUCTION = 300  # IVF_HNSW_SQ only
ANN_EF: int | None = None  # IVF_HNSW_SQ only: candidates per search (LanceDB's default 1.5 * limit)


@dataclass(frozen=True)
class AnnParams:
    """How the ANN index is built (`index_type` .. `ef_construction`) and searched (the rest)."""

    index_type: AnnIndexType = ANN_INDEX_TYPE
    partition_rows: int = ANN_PARTITION_ROWS
    num_sub_vectors: int = ANN_NUM_SUB_VECTORS
    m: int = ANN_M
    ef_construction: int = ANN_EF_CONSTRUCTION
    nprobes: int = ANN_NPROBES
    refine_factor: int | None = ANN_REFINE_FACTOR
    ef: int | None = ANN_EF

    def num_partitions(self, rows: int) -> int:
        return max(1, math.ceil(rows / self.partition_rows))

    def index_config(self, rows: int) -> IvfPq | IvfSq | IvfRq | IvfFlat | HnswSq:
        partitions = self.num_partitions(rows)
        if self.index_type == "IVF_PQ":
            return IvfPq(
                distance_type="cosine",
                num_partitions=partitions,
                num_sub_vectors=self.num_sub_vectors,
            )
        if self.index_type == "IVF_SQ":
            return IvfSq(distance_type="cosine", num_partitions=partitions)
        if self.index_type == "IVF_RQ":
            return IvfRq(distance_type="cosine", num_partitions=partitions)
        if self.index_type == "IVF_FLAT":
            return IvfFlat(distance_type="cosine", num_partitions=partitions)
        return HnswSq(
            distance_type="cosine",
            num_partitions=partitions,
            m=self.m,
            ef_construction=self.ef_construction,
        )

    def build_params(self, rows: int) -> str:
        text = f"partitions={self.num_partitions(rows)}"
        if self.index_type == "IVF_PQ":
            text += f" sub_vectors={self.num_sub_vectors}"
        if self.index_type == "IVF_HNSW_SQ":
            text += f" m={self.m} ef_construction={self.ef_construction}"
        return text

    def search_params(self) -> str:
        text = f"nprobes={self.nprobes}"
        if self.ef is not None:
            text += f" ef={self.ef}"
        if self.refine_factor is not None:
            text += f" refine={self.refine_factor}"
        return text


ANN_PARAMS = AnnParams()


def build_ann_index(table: lancedb.table.Table, rows: int, params: AnnParams = ANN_PARAMS) -> None:
    """(Re)build the vector index over `rows` rows; returns once it is usable."""
    log.info(
        "building %s index over %d rows (%s)", params.index_type, rows, params.build_params(rows)
    )
    table.create_index("vector", config=params.index_config(rows), replace=True)


async def vector_search(
    table: AsyncTable,
    vector: Vectors,
    limit: int,
    params: AnnParams = ANN_PARAMS,
    columns: Sequence[str] = ("id",),
    where: str | None = None,
) -> list[dict[str, Any]]:
    """Rows nearest `vector` by cosine distance (`columns` and `_distance`), best first;
    only rows matching the SQL filter `where` (applied before the search) when given;
    ANN where an index exists, exact otherwise
    (LanceDB scans every row of a table without a vector index and ignores the ANN knobs).

    On LanceDB's async API, awaited on the caller's event loop: the sync API runs the same
    query on a background loop thread, which costs a few milliseconds of wall and CPU time
    per query more."""
    query = (
        table.vector_search(np.asarray(vector, dtype=np.float32))
        .column("vector")
        .distance_type("cosine")
        .nprobes(params.nprobes)
    )
    if params.refine_factor is not None:
        query = query.refine_factor(params.refine_factor)
    if params.ef is not None:
        query = query.ef(params.ef)
    if where is not None:
        query = query.where(where)
    selected = [*columns, "_distance"]  # naming _distance silences a warning
    rows: list[dict[str, Any]] = await query.select(selected).limit(limit).to_list()
    return rows


def outgrown(indexed_rows: int, rows: int, params: AnnParams = ANN_PARAMS) -> bool:
    """The table now calls for at least twice the partitions its index was trained with."""
    return params.num_partitions(rows) >= 2 * params.num_partitions(indexed_rows)
