"""Late interaction: token vectors in a real LanceDB multivector column, MaxSim computed by
LanceDB checked against numpy, and a `maxsim@K>ce@N` cascade through real workers with a
token model distilled here from the packaged teacher."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pytest
from rich.console import Console

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.retrieval.corpus import sample_corpus_path, sample_queries
from rankstream.retrieval.token_store import TokenStore
from rankstream.workers.app import running_workers
from rankstream.workers.tools.indexing import index_corpus

pytestmark = pytest.mark.integration

DIMENSION = 16


def unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.normal(size=(count, DIMENSION)).astype(np.float32)
    unit: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


@pytest.fixture
def token_store(tmp_path: Path) -> tuple[TokenStore, dict[str, np.ndarray]]:
    """Five documents of 1 to 40 token vectors each, one id with a quote in it."""
    rng = np.random.default_rng(7)
    vectors = {f"doc-{n}'s": unit_rows(rng, size) for n, size in enumerate((1, 3, 8, 40, 17))}
    store = TokenStore(str(tmp_path / "db"), "corpus", "abc123", DIMENSION)
    store.write(list(vectors), list(vectors.values()))
    return store, vectors


def test_the_multivector_column_reads_back_what_was_written(
    token_store: tuple[TokenStore, dict[str, np.ndarray]],
) -> None:
    store, written = token_store
    assert store.count() == 5
    read = store.read(list(written))
    assert set(read) == set(written)
    for doc_id, vectors in written.items():
        assert read[doc_id].shape == vectors.shape
        np.testing.assert_allclose(read[doc_id], vectors, atol=1e-3)  # stored as float16
    store.write(["doc-0's"], [written["doc-1's"]])  # an upsert replaces, never duplicates
    assert store.count() == 5
    assert store.read(["doc-0's"])["doc-0's"].shape == written["doc-1's"].shape


async def test_maxsim_from_the_store_is_the_sum_of_each_query_tokens_best_cosine(
    token_store: tuple[TokenStore, dict[str, np.ndarray]],
) -> None:
    store, written = token_store
    store.ensure_id_index()
    query = unit_rows(np.random.default_rng(8), 6)
    ids = ["doc-3's", "doc-0's", "doc-4's"]  # an order of the caller's, kept
    scores = await store.maxsim(query, ids)
    expected = [float((query @ written[i].T).max(axis=1).sum()) for i in ids]
    np.testing.assert_allclose(scores, expected, atol=5e-3)  # stored as float16
    by_search = await store.maxsim_by_search(query, ids)  # LanceDB's own arithmetic
    np.testing.assert_allclose(scores, by_search, atol=2e-3)
    with pytest.raises(Exception, match="no token vectors"):
        await store.maxsim(query, ["doc-0's", "unknown"])


def test_the_id_index_covers_rows_written_after_it(
    token_store: tuple[TokenStore, dict[str, np.ndarray]],
) -> None:
    store, written = token_store
    store.ensure_id_index()
    store.write(["late"], [written["doc-2's"]])
    store.ensure_id_index()
    table = lancedb.connect(store.uri).open_table(store.name)
    (index,) = table.list_indices()
    assert index.columns == ["id"]
    stats = table.index_stats(index.name)
    assert stats is not None
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (6, 0)


async def test_a_maxsim_cascade_ranks_with_a_distilled_token_model(
    settings: Settings, tmp_path: Path, token_model: Path
) -> None:
    assert (token_model / "modules.json").is_file()
    settings = settings.model_copy(
        update={"lancedb_uri": str(tmp_path / "db"), "late_interaction_model": str(token_model)}
    )
    index_corpus(settings, sample_corpus_path(), Console(quiet=True))
    question = next(q for q in sample_queries() if q.relevant)
    async with running_workers(settings), RankstreamClient(settings) as client:
        result = await client.query(
            question.text, top_k=3, pipeline="dense+maxsim@10>ce@3", timeout_s=120
        )
    assert [stage.name for stage in result.stages] == ["maxsim@10", "ce@3"]
    first = result.stages[0]
    assert (first.model_id, first.candidates, first.pairs) == (str(token_model), 10, 10)
    assert result.results[0].doc_id in question.relevant
