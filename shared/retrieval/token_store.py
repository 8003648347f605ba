"""Documents' token vectors for late interaction, in LanceDB: a table beside the content
table, `<table>__tokens_<model fingerprint>`, one row per document (`id`, with a BTree
index, and `tokens`, a multivector column: a list of fixed-size float16 vectors).

Reranking candidates by MaxSim reads their rows by id, as Arrow buffers, and scores them
with one matrix product: several times cheaper than LanceDB's own multivector search
filtered to the same ids (README, "Late interaction"), which is kept as the reference
scorer (`maxsim_by_search`) and stays the way to search the whole table by MaxSim.

A table of its own per token model, rather than columns of the content table: retraining or
swapping the late-interaction model re-encodes only this table, and a table without one
serves every other stage unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import lancedb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from lancedb.index import BTree
from lancedb.table import AsyncTable

from rankstream.errors import InvalidRequestError
from rankstream.models.late_interaction import TokenVectors

if TYPE_CHECKING:
    from rankstream.models.late_interaction import TokenEmbedder

VECTOR_TYPE = pa.float16()  # half the bytes of float32; MaxSim moves by < 1e-3
VECTOR_BYTES = 2


def token_table_name(table: str, fingerprint: str) -> str:
    return f"{table}__tokens_{fingerprint}"


class TokenStore:
    """The token vectors of one content table's documents, for one token model.

    Args:
        uri: the LanceDB directory or URI of the content table.
        table: the content table's name.
        fingerprint: the token model's (`TokenEmbedder.fingerprint`).
        dimension: its vectors' size.
    """

    def __init__(self, uri: str, table: str, fingerprint: str, dimension: int) -> None:
        self.uri = uri
        self.name = token_table_name(table, fingerprint)
        self._dimension = dimension
        self._schema = pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("tokens", pa.list_(pa.list_(VECTOR_TYPE, dimension))),
            ]
        )
        self._search_table: AsyncTable | None = None

    @classmethod
    def of(cls, embedder: TokenEmbedder, uri: str, table: str) -> TokenStore:
        """The store of `table`'s vectors as `embedder` encodes them."""
        return cls(uri, table, embedder.fingerprint, embedder.dimension)

    def count(self) -> int:
        """Documents with stored vectors (0 when the table does not exist yet)."""
        db = lancedb.connect(self.uri)
        if self.name not in db.table_names():
            return 0
        return int(db.open_table(self.name).count_rows())

    def write(self, ids: Sequence[str], vectors: Sequence[TokenVectors]) -> None:
        """Upsert the documents' token vectors by id."""
        rows = pa.table(
            {
                "id": pa.array(list(ids), pa.string()),
                "tokens": pa.array(
                    [v.astype(np.float16).tolist() for v in vectors], self._schema.field(1).type
                ),
            },
            schema=self._schema,
        )
        db = lancedb.connect(self.uri)
        if self.name not in db.table_names():
            db.create_table(self.name, rows)
            return
        table = db.open_table(self.name)
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
            rows
        )

    def ensure_id_index(self) -> None:
        """Index `id` (a BTree), and add rows written since to it: the candidates' rows are
        read by id, and without it every read scans the whole id column."""
        table = lancedb.connect(self.uri).open_table(self.name)
        indexes = {tuple(index.columns): index for index in table.list_indices()}
        if ("id",) not in indexes:
            table.create_index("id", config=BTree())
            return
        stats = table.index_stats(indexes[("id",)].name)
        if stats is not None and stats.num_unindexed_rows:
            table.optimize()

    def read(self, ids: Sequence[str]) -> dict[str, TokenVectors]:
        """The stored vectors of `ids` (those that have some), as float32."""
        table = lancedb.connect(self.uri).open_table(self.name)
        rows = table.search().where(f"id IN ({_sql_strings(ids)})").limit(len(ids)).to_arrow()
        flat, spans = self._unpack(rows)
        return {doc_id: flat[start:end] for doc_id, (start, end) in spans.items()}

    async def maxsim(self, query: TokenVectors, ids: Sequence[str]) -> list[float]:
        """MaxSim of `query` against each of `ids`, in order: for each query token its best
        cosine with any of the document's tokens, summed (rows are unit vectors).

        Raises InvalidRequestError when a document has no stored vectors (index the corpus
        with RANKSTREAM_LATE_INTERACTION_MODEL set)."""
        if not ids:
            return []
        table = await self._open()
        query_rows = table.query().where(f"id IN ({_sql_strings(ids)})").limit(len(ids))
        flat, spans = self._unpack(await query_rows.select(["id", "tokens"]).to_arrow())
        self._check_stored(ids, spans)
        similarities = query.astype(np.float32) @ flat.T
        return [_best_sum(similarities[:, slice(*spans[doc_id])]) for doc_id in ids]

    async def maxsim_by_search(self, query: TokenVectors, ids: Sequence[str]) -> list[float]:
        """The same scores from LanceDB's multivector search (cosine distance, which is the
        number of query tokens minus MaxSim) filtered to `ids`: the reference for `maxsim`."""
        if not ids:
            return []
        table = await self._open()
        search = await table.search(query.astype(np.float32), vector_column_name="tokens")
        rows = await (
            search.distance_type("cosine")
            .where(f"id IN ({_sql_strings(ids)})")
            .select(["id", "_distance"])
            .limit(len(ids))
            .to_arrow()
        )
        by_id = dict(zip(rows["id"].to_pylist(), rows["_distance"].to_pylist(), strict=True))
        self._check_stored(ids, by_id)
        return [len(query) - float(by_id[doc_id]) for doc_id in ids]

    def _unpack(self, rows: pa.Table) -> tuple[TokenVectors, dict[str, tuple[int, int]]]:
        """All the rows' vectors as one float32 matrix, and each id's span of its rows:
        straight from the Arrow buffers (a Python list per vector costs ~100x more)."""
        tokens = rows["tokens"].combine_chunks()
        flat = tokens.values.values.to_numpy().reshape(-1, self._dimension).astype(np.float32)
        offsets = tokens.offsets.to_numpy().tolist()
        spans = itertools.pairwise(offsets)
        return flat, dict(zip(rows["id"].to_pylist(), spans, strict=True))

    def _check_stored(self, ids: Sequence[str], found: Mapping[str, object]) -> None:
        missing = [doc_id for doc_id in ids if doc_id not in found]
        if missing:
            raise InvalidRequestError(
                f"{len(missing)} candidates have no token vectors in {self.name} "
                f"(e.g. {missing[0]!r}): index them with the late-interaction model"
            )

    async def _open(self) -> AsyncTable:
        if self._search_table is None:
            db = await lancedb.connect_async(self.uri)
            if self.name not in await db.table_names():
                raise InvalidRequestError(
                    f"no token vectors for this table ({self.name}): index the corpus with "
                    "RANKSTREAM_LATE_INTERACTION_MODEL set"
                )
            self._search_table = await db.open_table(self.name)
        return self._search_table


def _best_sum(similarities: npt.NDArray[np.float32]) -> float:
    """MaxSim from one document's (query tokens x document tokens) cosines."""
    return float(similarities.max(axis=1).sum()) if similarities.shape[1] else 0.0


def _sql_strings(values: Sequence[str]) -> str:
    """`'a', 'b'`: SQL string literals, quotes doubled, for an `IN (...)` list."""
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)
