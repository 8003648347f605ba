"""The LanceDB table of documents: index (upsert by id), search (cosine)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from typing import Protocol

import lancedb
import pyarrow as pa
from lancedb.table import AsyncTable

from rankstream.config import Settings
from rankstream.errors import StoreError
from rankstream.models.base import Embedder, Vectors
from rankstream.retrieval.ann import ANN_PARAMS, build_ann_index, outgrown, vector_search
from rankstream.retrieval.corpus import Document

log = logging.getLogger(__name__)

MODEL_KEY = b"rankstream.embedder_model"
WRITE_CHUNK = 2048

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class SearchHit:
    doc_id: str
    text: str
    score: float  # cosine similarity


class Retriever(Protocol):
    """What the retrieval worker searches: `DocumentStore`, or a fake in handler tests."""

    async def search(self, vector: Vectors, limit: int) -> list[SearchHit]: ...


class DocumentStore:
    """One LanceDB table: `id`, `title`, `text`, `vector` (normalised, so cosine).

    Args:
        uri: a LanceDB directory or URI (`s3://...` and the like).
        table: the table's name.
        ann_min_rows: from this many rows on, the table gets an ANN index.
        read_consistency_s: searches see rows other processes wrote at most this many
            seconds ago (0: every search checks for a newer version; None: never).
    """

    def __init__(
        self,
        uri: str,
        table: str,
        ann_min_rows: int,
        read_consistency_s: float | None = None,
    ) -> None:
        self._uri, self._name, self._ann_min_rows = uri, table, ann_min_rows
        self._consistency = (
            None if read_consistency_s is None else timedelta(seconds=read_consistency_s)
        )
        self._db = lancedb.connect(uri, read_consistency_interval=self._consistency)
        self._table: lancedb.table.Table | None = None
        self._search_table: AsyncTable | None = None  # searches run on the async API

    @classmethod
    def from_settings(cls, settings: Settings) -> DocumentStore:
        """The configured table (`lancedb_uri`, `table`, `ann_min_rows`, `read_consistency_s`)."""
        return cls(
            settings.lancedb_uri,
            settings.table,
            settings.ann_min_rows,
            settings.read_consistency_s,
        )

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
            self._upsert(to_arrow(chunk, vectors, embedder.model_id))
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
            db = await lancedb.connect_async(self._uri, read_consistency_interval=self._consistency)
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

        Small tables get one too: up to nprobes x partition_rows rows every partition is
        probed, so the results stay those of exact search, but they come from LanceDB's
        in-memory index cache rather than a scan of the files, which is faster."""
        rows = self.count()
        table = self._open()
        if rows < self._ann_min_rows:
            return
        index = next(iter(table.list_indices()), None)
        stats = table.index_stats(index.name) if index is not None else None
        if stats is None or outgrown(stats.num_indexed_rows, rows, ANN_PARAMS):
            build_ann_index(table, rows)
        elif stats.num_unindexed_rows:
            log.info("adding %d rows to the vector index", stats.num_unindexed_rows)
            table.optimize()

    def unindexed_rows(self) -> int:
        """Rows the vector index does not cover yet (searched by a scan); 0 without an index
        only when the table is empty."""
        table = self._open()
        index = next(iter(table.list_indices()), None)
        if index is None:
            return self.count()
        stats = table.index_stats(index.name)
        return int(stats.num_unindexed_rows) if stats is not None else self.count()


def _chunks(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(documents)
    while chunk := list(islice(iterator, size)):
        yield chunk


def to_arrow(documents: list[Document], vectors: Vectors, model_id: str) -> pa.Table:
    """Rows in the table's schema; the embedder that made the vectors is in its metadata."""
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
