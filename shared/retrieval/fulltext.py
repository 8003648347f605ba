"""The full-text (BM25) index: LanceDB's own, on one text column, no second store.

English analysis: lower case, ASCII folding, stop words removed, Snowball stemming. Rows
written after the index was built are searched by a scan until `optimize` adds them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import lancedb
from lancedb.table import AsyncTable

log = logging.getLogger(__name__)

# LanceDB parses the query text; punctuation (quotes, colons, parentheses) is its syntax,
# so a query is reduced to its words first.
NOT_A_WORD = re.compile(r"[^\w]+", re.UNICODE)


def build_fulltext_index(table: lancedb.table.Table, column: str) -> None:
    log.info("building the full-text index on %r", column)
    table.create_fts_index(
        column,
        use_tantivy=False,
        replace=True,
        language="English",
        stem=True,
        remove_stop_words=True,
        ascii_folding=True,
    )


def query_words(text: str) -> str:
    """The query as LanceDB's BM25 search should read it: its words, space separated."""
    return NOT_A_WORD.sub(" ", text).strip()


async def fulltext_search(
    table: AsyncTable,
    query: str,
    limit: int,
    columns: Sequence[str] = ("id",),
    where: str | None = None,
) -> list[dict[str, Any]]:
    """Rows by BM25 score (`columns` and `_score`), best first, only those matching the SQL
    filter `where` when given; none for a query without words."""
    words = query_words(query)
    if not words:
        return []
    search = table.query().nearest_to_text(words).select([*columns, "_score"]).limit(limit)
    if where is not None:
        search = search.where(where)
    rows: list[dict[str, Any]] = await search.to_list()
    return rows
