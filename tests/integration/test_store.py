"""The LanceDB store: a table past `ann_min_rows` gets its vector index, and while every
partition is probed the index returns exactly what a scan of the table returns."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pytest

from shared.config import Settings
from shared.corpus import read_documents, sample_corpus_path, sample_queries
from shared.errors import StoreError
from shared.models import load_embedder
from shared.store import DocumentStore, _outgrown


async def test_an_indexed_small_table_finds_what_a_scan_finds(
    tmp_path: Path, settings: Settings
) -> None:
    embedder = load_embedder(settings)
    documents = list(read_documents(sample_corpus_path()))
    scanned = DocumentStore(str(tmp_path / "scan"), "docs", ann_min_rows=len(documents) + 1)
    indexed = DocumentStore(str(tmp_path / "ann"), "docs", ann_min_rows=len(documents))
    for store in (scanned, indexed):
        store.index(documents, embedder)

    def indices(uri: Path) -> list[str]:
        return [i.name for i in lancedb.connect(str(uri)).open_table("docs").list_indices()]

    assert indices(tmp_path / "scan") == []
    assert indices(tmp_path / "ann") != []
    vectors = embedder.embed_queries([q.text for q in sample_queries()])
    for vector in vectors:
        expected = [hit.doc_id for hit in await scanned.search(vector, 10)]
        assert [hit.doc_id for hit in await indexed.search(vector, 10)] == expected


async def test_searching_a_missing_table_is_a_store_error(tmp_path: Path) -> None:
    store = DocumentStore(str(tmp_path), "absent", ann_min_rows=1_000)
    with pytest.raises(StoreError, match="does not exist"):
        await store.search(np.zeros(384, dtype=np.float32), 5)


def test_rows_added_later_are_indexed_too(tmp_path: Path, settings: Settings) -> None:
    embedder = load_embedder(settings)
    documents = list(read_documents(sample_corpus_path()))
    store = DocumentStore(str(tmp_path), "docs", ann_min_rows=30)
    store.index(documents[:40], embedder)
    store.index(documents[40:], embedder)
    table = lancedb.connect(str(tmp_path)).open_table("docs")
    (index,) = table.list_indices()
    stats = table.index_stats(index.name)
    assert stats is not None
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (len(documents), 0)


def test_an_index_is_retrained_once_the_table_calls_for_twice_its_partitions() -> None:
    assert not _outgrown(indexed_rows=5_000, rows=8_192)  # 2 partitions either way
    assert _outgrown(indexed_rows=4_096, rows=8_193)  # 1 partition, 3 called for
