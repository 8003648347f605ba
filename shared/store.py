"""The LanceDB table of documents: index (upsert by id), search (cosine)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import HnswSq, IvfFlat, IvfPq, IvfRq, IvfSq
from lancedb.table import AsyncTable

from shared.corpus import Document
from shared.errors import StoreError
from shared.models.base import Embedder, Vectors

log = logging.getLogger(__name__)

MODEL_KEY = b"rankstream.embedder_model"
WRITE_CHUNK = 2048

ProgressFn = Callable[[int], None]

AnnIndexType = Literal["IVF_PQ", "IVF_SQ", "IVF_RQ", "IVF_FLAT", "IVF_HNSW_SQ"]

# ANN index parameters, chosen with `workers/bench_store.py` (synthetic clustered 384-d corpora,
# 2 CPU cores, 200 queries, k=100). At 1M vectors IVF_SQ with these settings builds in 19 s and
# answers at p50 15 ms / p99 25 ms with recall@100 1.000 (exact search: p50 1.4 s). Without
# refine, recall is 0.987 (the 8-bit codes misorder near-ties; refine=2 re-scores 200
# candidates exactly for ~3 ms). The former IVF_PQ (sqrt(rows) partitions, 48 sub-vectors):
# 99 s build, recall 0.731 at nprobes=20. Sweeps at 1M (50 queries): 977 partitions gave the
# same recall and latency for a 61 s build; IVF_HNSW_SQ (m=16, ef_construction=100) a 125 s
# build, p50 15-21 ms, recall 0.988; IVF_PQ needed refine=10 for 1.000 (p50 19 ms). nprobes=20
# is 8% of the partitions at 1M, 4x what the synthetic data needs (nprobes=5 with refine=2
# already reaches 0.9998): a margin for real embeddings, which cluster less cleanly.
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
    table: AsyncTable, vector: Vectors, limit: int, params: AnnParams = ANN_PARAMS
) -> list[dict[str, Any]]:
    """Rows nearest `vector` by cosine distance; ANN where an index exists, exact otherwise
    (LanceDB scans every row of a table without a vector index and ignores the ANN knobs).

    On LanceDB's async API, awaited on the caller's event loop: the sync API runs the same
    query on a background loop thread, which cost ~3 ms and ~3 ms of CPU more per query
    (SciFact, 2 cores)."""
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
    columns = ["id", "title", "text", "_distance"]  # naming _distance silences a warning
    rows: list[dict[str, Any]] = await query.select(columns).limit(limit).to_list()
    return rows


@dataclass(frozen=True)
class SearchHit:
    doc_id: str
    text: str
    score: float  # cosine similarity


class DocumentStore:
    """One LanceDB table: `id`, `title`, `text`, `vector` (normalised, so cosine)."""

    def __init__(self, uri: str, table: str, ann_min_rows: int) -> None:
        self._uri = uri
        self._db = lancedb.connect(uri)
        self._name = table
        self._ann_min_rows = ann_min_rows
        self._table: lancedb.table.Table | None = None
        self._search_table: AsyncTable | None = None  # searches run on the async API

    def exists(self) -> bool:
        return self._name in self._db.table_names()

    def count(self) -> int:
        return int(self._open().count_rows()) if self.exists() else 0

    def embedder_model(self) -> str | None:
        if not self.exists():
            return None
        metadata = self._open().schema.metadata or {}
        value = metadata.get(MODEL_KEY)
        return value.decode() if value else None

    def index(
        self, documents: Iterable[Document], embedder: Embedder, on_chunk: ProgressFn | None = None
    ) -> int:
        """Embed and upsert documents by id; build an ANN index once the table needs one."""
        written = 0
        for chunk in _chunks(documents, WRITE_CHUNK):
            vectors = embedder.embed_documents([d.content for d in chunk])
            self._upsert(_to_arrow(chunk, vectors, embedder.model_id))
            written += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
        self.ensure_ann_index()
        return written

    async def search(self, vector: Vectors, limit: int) -> list[SearchHit]:
        """Nearest documents by cosine similarity, best first."""
        rows = await vector_search(await self._open_for_search(), vector, limit)
        return [
            SearchHit(
                str(r["id"]),
                Document(r["id"], r["text"], r["title"]).content,
                1.0 - float(r["_distance"]),
            )
            for r in rows
        ]

    async def _open_for_search(self) -> AsyncTable:
        if self._search_table is None:
            db = await lancedb.connect_async(self._uri)
            if self._name not in await db.table_names():
                raise StoreError(
                    f"table {self._name!r} does not exist: run `rankstream index` first"
                )
            table = await db.open_table(self._name)
            if "vector" not in (await table.schema()).names:
                raise StoreError(f"table {self._name!r} has no vector column")
            self._search_table = table
        return self._search_table

    def _open(self) -> lancedb.table.Table:
        if self._table is None:
            self._table = self._db.open_table(self._name)
        return self._table

    def _upsert(self, data: pa.Table) -> None:
        if not self.exists():
            self._table = self._db.create_table(self._name, data=data)
            return
        existing = self.embedder_model()
        model = (data.schema.metadata or {}).get(MODEL_KEY, b"").decode()
        if existing and existing != model:
            raise StoreError(
                f"table {self._name!r} holds {existing} vectors; re-index with that model "
                f"or use another table (got {model})"
            )
        (
            self._open()
            .merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )

    def ensure_ann_index(self) -> None:
        """Index every row once the table has `ann_min_rows`: build the vector index, add new
        rows to it, or rebuild it when the table has outgrown its partitions (rows LanceDB
        has not indexed are scanned on every search).

        Small tables get one too: up to nprobes x partition_rows (81,920) rows every partition
        is probed, so the results stay those of exact search (SciFact, 5,183 rows, 300
        queries: recall@5 and @100 1.000 against a flat scan), but they come from LanceDB's
        in-memory index cache rather than a scan of the files: at k=5, p50 6.2 ms and 6.8 ms
        of CPU per query against 8.8 and 10.1 ms."""
        rows = self.count()
        table = self._open()
        if rows < self._ann_min_rows:
            return
        index = next(iter(table.list_indices()), None)
        stats = table.index_stats(index.name) if index is not None else None
        if stats is None or _outgrown(stats.num_indexed_rows, rows):
            build_ann_index(table, rows)
        elif stats.num_unindexed_rows:
            log.info("adding %d rows to the vector index", stats.num_unindexed_rows)
            table.optimize()


def _outgrown(indexed_rows: int, rows: int, params: AnnParams = ANN_PARAMS) -> bool:
    """The table now calls for at least twice the partitions its index was trained with."""
    return params.num_partitions(rows) >= 2 * params.num_partitions(indexed_rows)


def _chunks(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(documents)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _to_arrow(documents: list[Document], vectors: Vectors, model_id: str) -> pa.Table:
    dimension = vectors.shape[1]
    schema = pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
        ],
        metadata={MODEL_KEY: model_id.encode()},
    )
    columns = [
        [d.doc_id for d in documents],
        [d.title for d in documents],
        [d.text for d in documents],
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dimension),
    ]
    return pa.Table.from_arrays(columns, schema=schema)
