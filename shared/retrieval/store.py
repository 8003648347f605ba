"""The LanceDB table of documents: index (upsert by id), search by vector, by BM25, or both.

One table holds, per document: `id`, `title`, `text`, `content` (title + text: what is
embedded, searched and reranked), `vector` (normalised, so cosine), and `doc_tokens` (the
content's token ids for the cross-encoder, computed once here). Two indexes stand beside
it, both LanceDB's own: the vector index (`ann`) and a full-text (BM25) index on `content`.
Re-indexing updates both (`ensure_indexes`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from typing import Any, Protocol

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.table import AsyncTable

from rankstream.config import Settings
from rankstream.errors import InvalidRequestError, StoreError
from rankstream.models.base import DocumentTokenizer, Embedder, TokenIds, Vectors
from rankstream.planning.plan import Fusion
from rankstream.retrieval.ann import ANN_PARAMS, build_ann_index, outgrown, vector_search
from rankstream.retrieval.corpus import Document
from rankstream.retrieval.fulltext import build_fulltext_index, fulltext_search
from rankstream.retrieval.fusion import SearchMode, fuse, overlap_at_10
from rankstream.wire.filters import FilterLiteral, LiteralKind, ParsedFilter

log = logging.getLogger(__name__)

MODEL_KEY = b"rankstream.embedder_model"
TOKENIZER_KEY = b"rankstream.tokenizer"
WRITE_CHUNK = 2048
# Hybrid search without a plan (tools): reciprocal rank fusion of each list's top 100.
DEFAULT_FUSION = Fusion(dense_weight=1.0, bm25_weight=1.0, depth=100)
# Token ids kept per document: enough for MaxP windows over long documents.
MAX_STORED_TOKENS = 8192
VECTOR, CONTENT, TOKENS = "vector", "content", "doc_tokens"
TABLE_LAYOUT = 2  # 1: id, title, text, vector; 2: + content (full text), doc_tokens

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class SearchHit:
    doc_id: str
    text: str
    score: float  # cosine similarity (dense), BM25 score (bm25), fused score (hybrid)
    token_ids: TokenIds | None = None  # the cross-encoder's ids, when the table has them


@dataclass(frozen=True)
class SearchResult:
    """Hits best first, what each list took, and the table version searched."""

    hits: list[SearchHit]
    mode: SearchMode
    dense_ms: float
    bm25_ms: float
    table_version: int
    tokenizer: str | None  # fingerprint of the tokenizer that made `token_ids`
    dense_scores: list[float]  # the dense list's top scores (for adaptive depth)
    bm25_scores: list[float]
    overlap_at_10: float | None  # share of the dense top 10 also in the BM25 top 10


class Retriever(Protocol):
    """What the retrieval worker searches: `DocumentStore`, or a fake in handler tests."""

    async def search(
        self,
        query: str,
        vector: Vectors | None,
        limit: int,
        mode: SearchMode,
        where: ParsedFilter | None = None,
        fusion: Fusion = ...,
    ) -> SearchResult: ...

    async def version(self) -> int: ...


class DocumentStore:
    """One LanceDB table and its vector and full-text indexes.

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
        self._search_tokenizer: str | None = None
        self._filter_columns: dict[str, pa.DataType] = {}  # name: type
        self._version: tuple[float, int] | None = None  # (when read, version)

    @classmethod
    def from_settings(cls, settings: Settings, table: str | None = None) -> DocumentStore:
        """The configured table (or `table`): `lancedb_uri`, `ann_min_rows`,
        `read_consistency_s`."""
        return cls(
            settings.lancedb_uri,
            table or settings.table,
            settings.ann_min_rows,
            settings.read_consistency_s,
        )

    def exists(self) -> bool:
        return self._name in self._db.table_names()

    def count(self) -> int:
        return int(self._open().count_rows()) if self.exists() else 0

    def embedder_model(self) -> str | None:
        return self._metadata(MODEL_KEY)

    def tokenizer(self) -> str | None:
        """Fingerprint of the tokenizer whose ids the `doc_tokens` column holds."""
        return self._metadata(TOKENIZER_KEY)

    def _metadata(self, key: bytes) -> str | None:
        if not self.exists():
            return None
        value = (self._open().schema.metadata or {}).get(key)
        return value.decode() if value else None

    def index(
        self,
        documents: Iterable[Document],
        embedder: Embedder,
        tokenizer: DocumentTokenizer | None = None,
        on_chunk: ProgressFn | None = None,
    ) -> int:
        """Embed (and, with `tokenizer`, tokenize for the cross-encoder) and upsert documents
        by id; then bring the vector and full-text indexes up to date."""
        written = 0
        for chunk in _chunks(documents, WRITE_CHUNK):
            contents = [d.content for d in chunk]
            vectors = embedder.embed_documents(contents)
            tokens = tokenizer.encode_documents(contents) if tokenizer is not None else None
            fingerprint = tokenizer.fingerprint if tokenizer is not None else None
            self._upsert(to_arrow(chunk, vectors, embedder.model_id, tokens, fingerprint))
            written += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
        self.ensure_indexes()
        return written

    async def search(
        self,
        query: str,
        vector: Vectors | None,
        limit: int,
        mode: SearchMode = SearchMode.DENSE,
        where: ParsedFilter | None = None,
        fusion: Fusion = DEFAULT_FUSION,
    ) -> SearchResult:
        """The `limit` best documents for `query` (BM25) and/or `vector` (cosine), best
        first; `hybrid` fuses both lists as `fusion` says (`fusion.py`). With `where`, only
        documents matching that metadata filter.

        Raises:
            InvalidRequestError: `where` names a column the table does not have, or compares
                a column with a literal its type cannot hold (see `_literal_problem`); the
                message names the column, its type and the literal. Fix the filter.
            StoreError: the table does not exist or was made by an older rankstream.
            ValueError: a dense or hybrid search without `vector` (the caller's mistake).
        """
        table = await self._open_for_search()
        if mode != SearchMode.BM25 and vector is None:
            raise ValueError(f"{mode} search needs the query vector")
        sql = self._checked_filter(where)
        depth = limit if mode != SearchMode.HYBRID else max(limit, fusion.depth)
        (dense, dense_ms), (bm25, bm25_ms) = await asyncio.gather(  # hybrid: both at once
            _timed(
                vector_search(table, vector, depth, columns=_COLUMNS, where=sql)
                if vector is not None and mode != SearchMode.BM25
                else None
            ),
            _timed(
                fulltext_search(table, query, depth, columns=_COLUMNS, where=sql)
                if mode != SearchMode.DENSE
                else None
            ),
        )
        rows, scores = _ranked(mode, dense, bm25, fusion, limit)
        return SearchResult(
            hits=[_hit(row, score) for row, score in zip(rows, scores, strict=True)],
            mode=mode,
            dense_ms=dense_ms,
            bm25_ms=bm25_ms,
            table_version=await self.version(),
            tokenizer=self._search_tokenizer,
            dense_scores=[1.0 - float(r["_distance"]) for r in dense[:limit]],
            bm25_scores=[float(r["_score"]) for r in bm25[:limit]],
            overlap_at_10=overlap_at_10([str(r["id"]) for r in dense], [str(r["id"]) for r in bm25])
            if dense and bm25
            else None,
        )

    def _checked_filter(self, where: ParsedFilter | None) -> str | None:
        if where is None:
            return None
        unknown = where.columns - self._filter_columns.keys()
        if unknown:
            raise InvalidRequestError(
                f"table {self._name!r} has no filterable column {sorted(unknown)}; it has "
                f"{sorted(self._filter_columns) or 'none'} (extra fields of the indexed documents)"
            )
        for comparison in where.comparisons:
            kind = self._filter_columns[comparison.column]
            for literal in comparison.literals:
                problem = _literal_problem(kind, literal)
                if problem is not None:
                    raise InvalidRequestError(
                        f"filter: column {comparison.column!r} of table {self._name!r} is "
                        f"{kind}; {literal.text} {problem}"
                    )
        return where.sql

    async def version(self) -> int:
        """The table version searches see (re-read at most every read-consistency interval):
        it changes whenever the table does, so cached answers can be keyed by it."""
        # timedelta(0) is falsy, and 0 means "check every time": test for None, not truth.
        interval = (
            self._consistency.total_seconds() if self._consistency is not None else float("inf")
        )
        now = time.monotonic()
        if self._version is None or now - self._version[0] >= interval:
            table = await self._open_for_search()
            self._version = (now, int(await table.version()))
        return self._version[1]

    async def _open_for_search(self) -> AsyncTable:
        if self._search_table is None:
            db = await lancedb.connect_async(self._uri, read_consistency_interval=self._consistency)
            if self._name not in await db.table_names():
                raise StoreError(
                    f"table {self._name!r} does not exist: run `rankstream index` first"
                )
            table = await db.open_table(self._name)
            schema = await table.schema()
            missing = {VECTOR, CONTENT} - set(schema.names)
            if missing:
                raise StoreError(
                    f"table {self._name!r} has no {sorted(missing)} column: it was indexed by "
                    "an older rankstream; index the corpus again into a new table"
                )
            value = (schema.metadata or {}).get(TOKENIZER_KEY)
            self._search_tokenizer = value.decode() if value else None
            self._filter_columns = {
                f.name: f.type for f in schema if f.name not in _UNFILTERABLE and _is_scalar(f.type)
            }
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
        for key, what in ((MODEL_KEY, "vectors"), (TOKENIZER_KEY, "token ids")):
            existing = self._metadata(key)
            incoming = (data.schema.metadata or {}).get(key, b"").decode()
            if existing and existing != incoming:
                raise StoreError(
                    f"table {self._name!r} holds {what} of {existing}; re-index with that "
                    f"model or use another table (got {incoming or 'none'})"
                )
        data = _conform(data, self._open().schema)
        (
            self._open()
            .merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )

    def ensure_indexes(self) -> None:
        """Bring both indexes up to date: the full-text index always (BM25 over every row),
        the vector index once the table has `ann_min_rows` (build it, add new rows, or
        rebuild it when the table has outgrown its partitions). Rows an index does not cover
        yet are scanned on every search.

        Small tables get a vector index too: up to nprobes x partition_rows rows every
        partition is probed, so the results stay those of exact search, but they come from
        LanceDB's in-memory index cache rather than a scan of the files, which is faster."""
        table = self._open()
        indexes = {tuple(index.columns): index for index in table.list_indices()}
        if (CONTENT,) not in indexes:
            build_fulltext_index(table, CONTENT)
        rows = self.count()
        vector_index = indexes.get((VECTOR,))
        stats = table.index_stats(vector_index.name) if vector_index is not None else None
        if rows >= self._ann_min_rows and (
            stats is None or outgrown(stats.num_indexed_rows, rows, ANN_PARAMS)
        ):
            build_ann_index(table, rows)
        if self.unindexed_rows():
            log.info("adding new rows to the indexes")
            table.optimize()

    def unindexed_rows(self) -> int:
        """Rows some index does not cover yet (searched by a scan until `optimize`); the
        vector index counts only once the table is large enough to have one."""
        table = self._open()
        worst = 0
        for index in table.list_indices():
            stats = table.index_stats(index.name)
            worst = max(worst, int(stats.num_unindexed_rows) if stats is not None else 0)
        has_vector_index = any(tuple(i.columns) == (VECTOR,) for i in table.list_indices())
        if self.count() >= self._ann_min_rows and not has_vector_index:
            return self.count()
        return worst


_COLUMNS = ["id", "content", TOKENS]
_UNFILTERABLE = frozenset({VECTOR, TOKENS, CONTENT, "text"})


def _is_scalar(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
        or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    )  # fmt: skip


def _literal_problem(kind: pa.DataType, literal: FilterLiteral) -> str | None:
    """Why a column of type `kind` cannot be compared with `literal`, or None when it can.

    Text columns take strings; integer columns integer literals within their width and
    sign (`year = 2020.5` and `year = '2020'` are refused, not cast); floating columns
    numbers their width holds as finite values; boolean columns TRUE and FALSE. LanceDB
    would otherwise fail the search itself, after the query was embedded.
    """
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return None if literal.kind == LiteralKind.STRING else "is not a string literal ('...')"
    if pa.types.is_boolean(kind):
        return None if literal.kind == LiteralKind.BOOLEAN else "is not TRUE or FALSE"
    if pa.types.is_integer(kind):
        if literal.kind != LiteralKind.INTEGER:
            return "is not an integer literal"
        info = np.iinfo(kind.to_pandas_dtype())
        inside = int(info.min) <= int(literal.text) <= int(info.max)
        return None if inside else f"is outside the column's range {info.min}..{info.max}"
    if pa.types.is_floating(kind):
        if literal.kind not in (LiteralKind.INTEGER, LiteralKind.FLOAT):
            return "is not a number"
        largest = float(np.finfo(kind.to_pandas_dtype()).max)
        inside = abs(float(literal.text)) <= largest
        return None if inside else f"is outside the column's range +-{largest:g}"
    return "cannot be compared with this column"


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """`data` in an existing table's schema: its missing columns null, columns the table
    lacks left out (a metadata field first seen after the table was made is not filterable
    until the corpus is indexed into a new table), values cast to the table's types."""
    dropped = [name for name in data.column_names if name not in schema.names]
    if dropped:
        log.warning("fields %s are not columns of the table; left out", dropped)
    columns = [
        data.column(f.name).cast(f.type) if f.name in data.column_names
        else pa.nulls(data.num_rows, f.type)
        for f in schema
    ]  # fmt: skip
    return pa.Table.from_arrays(columns, schema=schema)


async def _timed(
    search: Awaitable[list[dict[str, Any]]] | None,
) -> tuple[list[dict[str, Any]], float]:
    """The rows and the milliseconds they took; no rows and 0 for a list not searched."""
    if search is None:
        return [], 0.0
    started = time.perf_counter()
    rows: list[dict[str, Any]] = await search
    return rows, (time.perf_counter() - started) * 1000


def _ranked(
    mode: SearchMode,
    dense: list[dict[str, Any]],
    bm25: list[dict[str, Any]],
    fusion: Fusion,
    limit: int,
) -> tuple[list[dict[str, Any]], list[float]]:
    dense_hits = [(str(r["id"]), 1.0 - float(r["_distance"])) for r in dense]
    bm25_hits = [(str(r["id"]), float(r["_score"])) for r in bm25]
    if mode == SearchMode.DENSE:
        return dense[:limit], [score for _, score in dense_hits[:limit]]
    if mode == SearchMode.BM25:
        return bm25[:limit], [score for _, score in bm25_hits[:limit]]
    by_id = {str(r["id"]): r for r in [*bm25, *dense]}
    fused = fuse(dense_hits, bm25_hits, fusion.method, fusion.dense_weight, fusion.bm25_weight)[
        :limit
    ]
    return [by_id[doc] for doc, _ in fused], [score for _, score in fused]


def _hit(row: dict[str, Any], score: float) -> SearchHit:
    tokens = row.get(TOKENS)
    return SearchHit(
        str(row["id"]), str(row[CONTENT]), score, tuple(tokens) if tokens is not None else None
    )


def _chunks(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(documents)
    while chunk := list(islice(iterator, size)):
        yield chunk


def to_arrow(
    documents: list[Document],
    vectors: Vectors,
    model_id: str,
    tokens: list[TokenIds] | None = None,
    tokenizer: str | None = None,
) -> pa.Table:
    """Rows in the table's schema; the embedder that made the vectors and the tokenizer
    that made the token ids are in its metadata."""
    dimension = vectors.shape[1]
    metadata = {MODEL_KEY: model_id.encode()}
    if tokenizer is not None:
        metadata[TOKENIZER_KEY] = tokenizer.encode()
    schema = pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field(CONTENT, pa.string()),
            pa.field(VECTOR, pa.list_(pa.float32(), dimension)),
            pa.field(TOKENS, pa.list_(pa.int32())),
        ],
        metadata=metadata,
    )
    token_column = (
        [list(ids[:MAX_STORED_TOKENS]) for ids in tokens] if tokens else [None] * len(documents)
    )
    columns = [
        [d.doc_id for d in documents],
        [d.title for d in documents],
        [d.text for d in documents],
        [d.content for d in documents],
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dimension),
        pa.array(token_column, pa.list_(pa.int32())),
    ]
    table = pa.Table.from_arrays(columns, schema=schema)
    for name in sorted({key for d in documents for key in d.metadata}):
        values = [d.metadata.get(name) for d in documents]
        table = table.append_column(name, _metadata_column(values))
    return table


def _metadata_column(values: list[Any]) -> pa.Array:
    """One extra field of the documents as a column; text where its values mix types."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
