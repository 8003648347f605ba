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
import pyarrow as pa
import pytest

from rankstream.config import Settings
from rankstream.errors import InvalidRequestError, StoreError
from rankstream.models.registry import load_embedder
from rankstream.retrieval.ann import outgrown
from rankstream.retrieval.corpus import (
    Document,
    read_documents,
    sample_corpus_path,
    sample_queries,
)
from rankstream.retrieval.store import DocumentStore, to_arrow
from rankstream.wire.filters import parse_filter
from rankstream.workers.local import RANKSTREAM, settings_env

DIMENSION = 8


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


def typed_table(ids: range) -> pa.Table:
    """Rows `d<i>` with one metadata column of each filterable type: `title` (string),
    `year` (int64), `small` (int8), `count` (uint8), `score` (float64), `f32` (float32),
    `flag` (bool). Random vectors: these tests are about filters, not about ranking."""
    documents = [
        Document(f"d{i}", f"text {i}", f"title {i}",
                 {"year": 2000 + i, "small": i, "count": i, "score": i / 2, "f32": i / 2,
                  "flag": i % 2 == 0})
        for i in ids
    ]  # fmt: skip
    vectors = np.random.default_rng(0).random((len(documents), DIMENSION), dtype=np.float32)
    table = to_arrow(documents, vectors, "random")
    for name, kind in (("small", pa.int8()), ("count", pa.uint8()), ("f32", pa.float32())):
        table = table.set_column(
            table.schema.get_field_index(name), name, table.column(name).cast(kind)
        )
    return table


@pytest.fixture
def typed_store(tmp_path: Path) -> DocumentStore:
    lancedb.connect(str(tmp_path)).create_table("typed", data=typed_table(range(5)))
    return DocumentStore(str(tmp_path), "typed", ann_min_rows=1_000)


async def matching(store: DocumentStore, text: str) -> list[str]:
    result = await store.search("", np.ones(DIMENSION, np.float32), 10, where=parse_filter(text))
    return sorted(hit.doc_id for hit in result.hits)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("title = 'title 1'", ["d1"]),
        ("year = 2002 OR year IN (2003, 2004)", ["d2", "d3", "d4"]),
        ("small = -0 OR small >= 4", ["d0", "d4"]),
        ("count <= 255 AND count > 3", ["d4"]),
        ("score = 1 OR score >= 1.5e0", ["d2", "d3", "d4"]),
        ("f32 < 3.4e38 AND f32 = 0.5", ["d1"]),
        ("flag = TRUE AND NOT title IS NULL", ["d0", "d2", "d4"]),
        ("year IS NULL OR flag IS NULL", []),
    ],
)
async def test_literals_of_each_columns_type_filter_a_real_table(
    typed_store: DocumentStore, text: str, expected: list[str]
) -> None:
    assert await matching(typed_store, text) == expected


@pytest.mark.parametrize(
    ("text", "column", "kind", "literal"),
    [
        ("title = 1", "title", "string", "1"),
        ("title = TRUE", "title", "string", "TRUE"),
        ("year = '2020'", "year", "int64", "'2020'"),
        ("year = 2020.5", "year", "int64", "2020.5"),
        ("year = 2e3", "year", "int64", "2e3"),
        ("year = 99999999999999999999", "year", "int64", "99999999999999999999"),
        ("small = 128", "small", "int8", "128"),
        ("small > -129", "small", "int8", "-129"),
        ("count = -1", "count", "uint8", "-1"),
        ("score = 'a'", "score", "double", "'a'"),
        ("score < 1e400", "score", "double", "1e400"),
        ("f32 > 1e39", "f32", "float", "1e39"),
        ("flag = 1", "flag", "bool", "1"),
        ("flag = 'true'", "flag", "bool", "'true'"),
        ("year IN (2001, 'a')", "year", "int64", "'a'"),
        ("title = 'x' OR NOT (year = 2001 AND flag NOT IN (TRUE, 0))", "flag", "bool", "0"),
    ],
)
async def test_a_literal_its_column_cannot_hold_is_an_invalid_request_naming_both(
    typed_store: DocumentStore, text: str, column: str, kind: str, literal: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        await matching(typed_store, text)
    assert f"column {column!r}" in str(refused.value)
    assert f"is {kind};" in str(refused.value)
    assert f"; {literal} " in str(refused.value)


async def test_a_store_with_read_consistency_zero_sees_every_version_another_writer_makes(
    tmp_path: Path,
) -> None:
    """0 means "check on every read" (strong consistency), not "never re-read"."""
    writer = lancedb.connect(str(tmp_path)).create_table("t", data=typed_table(range(2)))
    store = DocumentStore(str(tmp_path), "t", ann_min_rows=1_000, read_consistency_s=0)
    before = await store.version()
    assert await matching(store, "year >= 2000") == ["d0", "d1"]

    writer.add(typed_table(range(2, 3)))

    assert await store.version() > before
    assert await matching(store, "year >= 2000") == ["d0", "d1", "d2"]
