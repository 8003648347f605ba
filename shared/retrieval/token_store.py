"""Documents' token vectors for late interaction, in LanceDB: a table beside the content
table, `<table>__tokens_<model fingerprint>`, one row per document (`id`, and `tokens`, a
multivector column: a list of fixed-size float16 vectors). MaxSim runs in the store: a
multivector search with cosine distance over the candidates' rows, whose distance is the
number of query tokens minus MaxSim.

A table of its own per token model, rather than columns of the content table: retraining or
swapping the late-interaction model re-encodes only this table, and a table without one
serves every other stage unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.table import AsyncTable

from rankstream.errors import InvalidRequestError
from rankstream.models.late_interaction import TokenVectors

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
        self._uri = uri
        self.name = token_table_name(table, fingerprint)
        self._dimension = dimension
        self._schema = pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("tokens", pa.list_(pa.list_(VECTOR_TYPE, dimension))),
            ]
        )
        self._search_table: AsyncTable | None = None

    def count(self) -> int:
        """Documents with stored vectors (0 when the table does not exist yet)."""
        db = lancedb.connect(self._uri)
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
        db = lancedb.connect(self._uri)
        if self.name not in db.table_names():
            db.create_table(self.name, rows)
            return
        table = db.open_table(self.name)
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
            rows
        )

    def read(self, ids: Sequence[str]) -> dict[str, TokenVectors]:
        """The stored vectors of `ids` (those that have some), as float32."""
        table = lancedb.connect(self._uri).open_table(self.name)
        rows = table.search().where(f"id IN ({_sql_strings(ids)})").limit(len(ids)).to_arrow()
        return {
            doc_id: np.asarray(tokens, dtype=np.float32)
            for doc_id, tokens in zip(
                rows["id"].to_pylist(), rows["tokens"].to_pylist(), strict=True
            )
        }

    async def maxsim(self, query: TokenVectors, ids: Sequence[str]) -> list[float]:
        """MaxSim of `query` against each of `ids`, in order, computed by LanceDB.

        Raises InvalidRequestError when a document has no stored vectors (index the corpus
        with RANKSTREAM_LATE_INTERACTION_MODEL set)."""
        if not ids:
            return []
        table = await self._open()
        search = await table.search(query.astype(np.float32), vector_column_name="tokens")
        rows = await (
            search.distance_type("cosine")
            .where(f"id IN ({_sql_strings(ids)})")
            .select(["id"])
            .limit(len(ids))
            .to_arrow()
        )
        by_id = dict(zip(rows["id"].to_pylist(), rows["_distance"].to_pylist(), strict=True))
        missing = [doc_id for doc_id in ids if doc_id not in by_id]
        if missing:
            raise InvalidRequestError(
                f"{len(missing)} candidates have no token vectors in {self.name} "
                f"(e.g. {missing[0]!r}): index them with the late-interaction model"
            )
        return [len(query) - float(by_id[doc_id]) for doc_id in ids]

    async def _open(self) -> AsyncTable:
        if self._search_table is None:
            db = await lancedb.connect_async(self._uri)
            if self.name not in await db.table_names():
                raise InvalidRequestError(
                    f"no token vectors for this table ({self.name}): index the corpus with "
                    "RANKSTREAM_LATE_INTERACTION_MODEL set"
                )
            self._search_table = await db.open_table(self.name)
        return self._search_table


def _sql_strings(values: Sequence[str]) -> str:
    """`'a', 'b'`: SQL string literals, quotes doubled, for an `IN (...)` list."""
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)
