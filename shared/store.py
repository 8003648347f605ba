"""The LanceDB table of documents: index (upsert by id), search (cosine)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.query import LanceVectorQueryBuilder

from shared.corpus import Document
from shared.errors import StoreError
from shared.models.base import Embedder, Vectors

log = logging.getLogger(__name__)

MODEL_KEY = b"rankstream.embedder_model"
WRITE_CHUNK = 2048

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class SearchHit:
    doc_id: str
    text: str
    score: float  # cosine similarity


class DocumentStore:
    """One LanceDB table: `id`, `title`, `text`, `vector` (normalised, so cosine)."""

    def __init__(self, uri: str, table: str, ann_min_rows: int = 100_000) -> None:
        self._db = lancedb.connect(uri)
        self._name = table
        self._ann_min_rows = ann_min_rows
        self._table: lancedb.table.Table | None = None

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
        self._maybe_build_ann_index()
        return written

    def search(self, vector: Vectors, limit: int) -> list[SearchHit]:
        """Nearest documents by cosine similarity, best first."""
        if not self.exists():
            raise StoreError(f"table {self._name!r} does not exist: run `rankstream index` first")
        query = self._open().search(np.asarray(vector, dtype=np.float32), "vector")
        if not isinstance(query, LanceVectorQueryBuilder):
            raise StoreError(f"table {self._name!r} has no vector column")
        columns = ["id", "title", "text", "_distance"]  # naming _distance silences a warning
        rows = query.distance_type("cosine").select(columns).limit(limit).to_list()
        return [
            SearchHit(
                str(r["id"]),
                Document(r["id"], r["text"], r["title"]).content,
                1.0 - float(r["_distance"]),
            )
            for r in rows
        ]

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

    def _maybe_build_ann_index(self) -> None:
        rows = self.count()
        table = self._open()
        if rows < self._ann_min_rows or table.list_indices():
            return
        partitions = max(1, int(math.sqrt(rows)))
        log.info("building IVF_PQ index over %d rows (%d partitions)", rows, partitions)
        table.create_index(metric="cosine", num_partitions=partitions, num_sub_vectors=48)


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
