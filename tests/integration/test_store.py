"""The LanceDB store: a table past `ann_min_rows` gets its vector index, and while every
partition is probed the index returns exactly what a scan of the table returns; a running
searcher sees what another process writes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import lancedb
import numpy as np
import pytest

from rankstream.config import Settings
from rankstream.errors import StoreError
from rankstream.models.registry import load_embedder
from rankstream.retrieval.ann import outgrown
from rankstream.retrieval.corpus import read_documents, sample_corpus_path, sample_queries
from rankstream.retrieval.store import DocumentStore
from rankstream.workers.local import RANKSTREAM, settings_env


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
        """The vector indexes (the full-text index every table has is left out)."""
        table = lancedb.connect(str(uri)).open_table("docs")
        return [i.name for i in table.list_indices() if i.columns == ["vector"]]

    assert indices(tmp_path / "scan") == []
    assert indices(tmp_path / "ann") != []
    vectors = embedder.embed_queries([q.text for q in sample_queries()])
    for vector in vectors:
        expected = [hit.doc_id for hit in (await scanned.search("", vector, 10)).hits]
        assert [hit.doc_id for hit in (await indexed.search("", vector, 10)).hits] == expected


async def test_searching_a_missing_table_is_a_store_error(tmp_path: Path) -> None:
    store = DocumentStore(str(tmp_path), "absent", ann_min_rows=1_000)
    with pytest.raises(StoreError, match="does not exist"):
        await store.search("query", np.zeros(384, dtype=np.float32), 5)


def test_rows_added_later_are_indexed_too(tmp_path: Path, settings: Settings) -> None:
    embedder = load_embedder(settings)
    documents = list(read_documents(sample_corpus_path()))
    store = DocumentStore(str(tmp_path), "docs", ann_min_rows=30)
    store.index(documents[:40], embedder)
    store.index(documents[40:], embedder)
    table = lancedb.connect(str(tmp_path)).open_table("docs")
    assert {tuple(index.columns) for index in table.list_indices()} == {("vector",), ("content",)}
    for index in table.list_indices():  # the vector index and the full-text index
        stats = table.index_stats(index.name)
        assert stats is not None
        assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (len(documents), 0)


def test_an_index_is_retrained_once_the_table_calls_for_twice_its_partitions() -> None:
    assert not outgrown(indexed_rows=5_000, rows=8_192)  # 2 partitions either way
    assert outgrown(indexed_rows=4_096, rows=8_193)  # 1 partition, 3 called for


async def test_a_running_searcher_sees_what_another_process_indexes_within_the_interval(
    tmp_path: Path, settings: Settings
) -> None:
    """`rankstream index` in a child process upserts new passages into a table a store is
    already searching (as a running retrieval worker does): within `read_consistency_s`
    the searcher finds them, and the vector index covers them."""
    uri, interval_s = str(tmp_path / "db"), 1.0
    settings = settings.model_copy(
        update={"lancedb_uri": uri, "ann_min_rows": 30, "read_consistency_s": interval_s}
    )
    embedder = load_embedder(settings)
    DocumentStore.from_settings(settings).index(read_documents(sample_corpus_path()), embedder)
    searcher = DocumentStore.from_settings(settings)
    text = "Octopuses taste with the suckers on their arms."
    vector = embedder.embed_queries([text])[0]
    assert "octopus-new" not in [
        hit.doc_id for hit in (await searcher.search(text, vector, 3)).hits
    ]
    new_corpus = tmp_path / "new.jsonl"
    new_corpus.write_text(json.dumps({"id": "octopus-new", "text": text}) + "\n")

    await asyncio.to_thread(
        subprocess.run,
        [RANKSTREAM, "index", str(new_corpus)],
        env=settings_env(settings), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    indexed_at = time.monotonic()
    while "octopus-new" not in [
        hit.doc_id for hit in (await searcher.search(text, vector, 3)).hits
    ]:
        assert time.monotonic() - indexed_at < interval_s + 5, "the new passage never appeared"
        await asyncio.sleep(0.1)

    assert DocumentStore.from_settings(settings).unindexed_rows() == 0
