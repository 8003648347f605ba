"""The affordability toolbox on the real pipeline: retrieval modes, token budgets and stored
token ids, adaptive depth, cascades, and the result cache shared through NATS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.models.registry import (
    load_embedder,
    load_reranker_tokenizer,
)
from rankstream.planning.scorers import MINILM_RERANKER_FP32, PACKAGED_PREFIX
from rankstream.retrieval.corpus import Document, read_documents, sample_corpus_path
from rankstream.retrieval.store import DocumentStore
from rankstream.wire.contract import RankedResult
from rankstream.workers.app import running_workers

pytestmark = pytest.mark.integration

QUERY = "How do vaccines train the immune system?"


@pytest.fixture
def own_db(settings: Settings, tmp_path: Path) -> Settings:
    """The sample corpus in a LanceDB of this test's own (tests here re-index it)."""
    settings = settings.model_copy(
        update={"lancedb_uri": str(tmp_path / "db"), "cache_ttl_s": 600.0}
    )
    DocumentStore.from_settings(settings).index(
        read_documents(sample_corpus_path()),
        load_embedder(settings),
        load_reranker_tokenizer(settings),
    )
    return settings


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def hits(metrics: Metrics, tier: str = "exact") -> float:
    return sample(metrics, "rankstream_cache_requests_total", {"tier": tier, "outcome": "hit"})


async def test_bm25_and_hybrid_find_the_answer_and_report_each_lists_time(
    settings: Settings,
) -> None:
    async with running_workers(settings), RankstreamClient(settings) as client:
        for mode in ("bm25", "hybrid"):
            result = await client.query(QUERY, top_k=3, pipeline=mode, cache=False)
            assert result.retrieval.mode == mode
            assert result.results[0].doc_id.startswith("vaccine-answer")
            assert result.retrieval.bm25_ms > 0
            assert (result.retrieval.dense_ms > 0) == (mode == "hybrid")
            assert result.timings_ms.search >= result.retrieval.bm25_ms


async def test_a_cascade_reports_each_stage_in_the_result(settings: Settings) -> None:
    async with running_workers(settings), RankstreamClient(settings) as client:
        result = await client.query(
            QUERY, top_k=5, pipeline="dense+ce@10/doc64>ce@4", timeout_s=120, cache=False
        )
    first, second = result.stages
    assert (first.name, first.candidates, first.pairs) == ("ce@10/doc64", 10, 10)
    assert (second.name, second.candidates, second.pairs) == ("ce@4", 4, 4)
    assert first.inference_ms > 0
    assert second.inference_ms > 0
    assert result.timings_ms.inference == pytest.approx(first.inference_ms + second.inference_ms)
    assert [doc.stage for doc in result.results] == ["ce@4"] * 4 + ["ce@10/doc64"]


async def test_a_document_over_the_budget_is_cut_or_windowed(settings: Settings) -> None:
    async with running_workers(settings), RankstreamClient(settings) as client:
        head = await client.query(QUERY, top_k=5, pipeline="dense+ce@5/doc16", cache=False)
        maxp = await client.query(QUERY, top_k=5, pipeline="dense+ce@5/maxp16", cache=False)
    (head_stage,), (maxp_stage,) = head.stages, maxp.stages
    assert head_stage.over_budget == maxp_stage.over_budget == 5
    assert head_stage.pairs == 5
    assert maxp_stage.pairs > 5
    assert maxp_stage.truncated_tokens < head_stage.truncated_tokens


async def test_auto_depth_stays_within_its_bounds(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_auto_depth": 12})
    async with running_workers(settings), RankstreamClient(settings) as client:
        result = await client.query(QUERY, top_k=3, pipeline="dense+ce@auto", cache=False)
    chosen = result.retrieval.chosen_depth
    assert chosen is not None
    assert 0 <= chosen <= 12
    assert result.reranked == chosen
    assert "dense_margin" in result.retrieval.features


async def test_a_cached_answer_is_served_by_another_replica_before_any_model_runs(
    own_db: Settings,
) -> None:
    """Replica A answers and caches; A stops; replica B, which never saw the query, answers
    it from the shared bucket, and a paraphrase from the semantic tier."""
    settings = own_db.model_copy(update={"semantic_cache_threshold": 0.9})
    first, second = Metrics(), Metrics()
    async with running_workers(settings, metrics=first), RankstreamClient(settings) as client:
        computed = await client.query(QUERY, top_k=3, depth=5)
    assert not computed.cached
    async with running_workers(settings, metrics=second), RankstreamClient(settings) as client:
        replayed = await client.query(QUERY.upper() + "!!", top_k=3, depth=5)
        paraphrase = await client.query("How do vaccines train the immune system", top_k=3, depth=5)
    assert replayed.cached
    assert [d.doc_id for d in replayed.results] == [d.doc_id for d in computed.results]
    assert replayed.timings_ms.inference == 0
    assert replayed.timings_ms.cache > 0
    assert paraphrase.cached  # without its question mark it normalises to the same key
    assert hits(second) == 2


async def test_a_semantic_hit_reuses_a_near_query_and_a_far_one_misses(own_db: Settings) -> None:
    settings = own_db.model_copy(update={"semantic_cache_threshold": 0.85})
    metrics = Metrics()
    async with (
        running_workers(settings, metrics=metrics),
        RankstreamClient(settings) as client,
    ):
        await client.query("how vaccines train our immune systems", top_k=3, depth=3)
        near = await client.query("how do vaccines train the immune system", top_k=3, depth=3)
        far = await client.query("why do planes leave contrails", top_k=3, depth=3)
    assert near.cached
    assert not far.cached
    assert hits(metrics, "semantic") == 1


async def test_re_indexing_the_table_invalidates_what_was_cached(own_db: Settings) -> None:
    settings = own_db
    async with running_workers(settings), RankstreamClient(settings) as client:
        await client.query(QUERY, top_k=3, depth=3)
        # The answer is sent before it is stored, so a repeat sent at once may still miss.
        assert (await until_cached(client, expected=True, within_s=5)).cached
        new = Document("vaccine-new", "Vaccines teach the immune system to fight a pathogen.")
        DocumentStore.from_settings(settings).index(
            [new], load_embedder(settings), load_reranker_tokenizer(settings)
        )
        # The retrieval worker sees the new version within read_consistency_s.
        fresh = await until_cached(client, expected=False, within_s=settings.read_consistency_s + 5)
    assert not fresh.cached
    assert "vaccine-new" in [d.doc_id for d in fresh.results]


async def until_cached(client: RankstreamClient, expected: bool, within_s: float) -> RankedResult:
    """The first answer whose `cached` is `expected`, or the last one after `within_s`."""
    give_up = time.monotonic() + within_s
    while True:
        result = await client.query(QUERY, top_k=3, depth=3)
        if result.cached == expected or time.monotonic() > give_up:
            return result
        await asyncio.sleep(0.5)


async def test_stored_token_ids_score_exactly_as_tokenizing_the_text(own_db: Settings) -> None:
    """With the fp32 model (batch-invariant), a table whose rows carry the cross-encoder's
    token ids and a table without them give the same scores; only the second has the rerank
    worker tokenize documents."""
    settings = own_db.model_copy(update={"reranker_model": PACKAGED_PREFIX + MINILM_RERANKER_FP32})
    DocumentStore.from_settings(settings, table="no_tokens").index(
        read_documents(sample_corpus_path()), load_embedder(settings)
    )
    results, tokenized_here = [], []
    for table in ("documents", "no_tokens"):
        metrics = Metrics()
        at = settings.model_copy(update={"table": table})
        async with running_workers(at, metrics=metrics), RankstreamClient(at) as client:
            results.append(await client.query(QUERY, top_k=5, depth=5, cache=False))
        tokenized_here.append(sample(metrics, "rankstream_rerank_tokenized_docs_total"))
    stored, tokenized = results
    assert tokenized_here == [0, 5]
    assert [d.doc_id for d in stored.results] == [d.doc_id for d in tokenized.results]
    assert [d.score for d in stored.results] == pytest.approx(
        [d.score for d in tokenized.results], abs=1e-5
    )
