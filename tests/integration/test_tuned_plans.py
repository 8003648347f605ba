"""Tuned plans through the real pipeline (nats-server with JetStream, LanceDB, the packaged
models, both workers): a profile served to requests that name no pipeline and cached under
it, convex hybrid fusion (`hybrid~W`), query-aware pruning (`/bestN`) and a stage that
blends its scores with the order it received (`~W`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.models.budgets import DocumentBudget, plan_pairs
from rankstream.models.registry import load_cross_encoder, load_embedder
from rankstream.planning.profile import Profile, load_profile
from rankstream.planning.scorers import MINILM_RERANKER_FP32, PACKAGED_PREFIX
from rankstream.retrieval.fusion import SearchMode, fuse
from rankstream.retrieval.store import DocumentStore
from rankstream.wire.contract import RankedResult
from rankstream.workers.app import running_workers

pytestmark = pytest.mark.integration

QUERY = "How do vaccines train the immune system?"
TUNED = "hybrid~0.6+ce@3/best64~0.5"
# The fp32 copy of the packaged cross-encoder scores a pair the same in any batch, so an
# answer's scores can be recomputed here; the int8 model's move with their batch-mates.
FP32 = PACKAGED_PREFIX + MINILM_RERANKER_FP32


def profile_file(tmp_path: Path, name: str, pipeline: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(Profile(pipeline=pipeline, about={"fitted_on": "a test"}).to_json())
    return path


def stage_names(result: RankedResult) -> list[str]:
    return [stage.name for stage in result.stages]


def ids(result: RankedResult) -> list[str]:
    return [doc.doc_id for doc in result.results]


async def ask(settings: Settings, pipeline: str | None = None) -> RankedResult:
    """One answer from workers started with `settings` (their profile, if any)."""
    async with running_workers(settings), RankstreamClient(settings) as client:
        return await client.query(QUERY, top_k=5, pipeline=pipeline, timeout_s=120)


async def answers(settings: Settings, top_k: int, *pipelines: str) -> list[RankedResult]:
    """Each pipeline's answer to QUERY, cache off, from one start of the workers."""
    async with running_workers(settings), RankstreamClient(settings) as client:
        return [
            await client.query(QUERY, top_k=top_k, pipeline=pipeline, cache=False, timeout_s=120)
            for pipeline in pipelines
        ]


async def until_cached(client: RankstreamClient, within_s: float = 10) -> RankedResult:
    """The first cached answer to QUERY (an answer is stored just after it is sent), or the
    last one after `within_s`."""
    give_up = time.monotonic() + within_s
    while True:
        result = await client.query(QUERY, top_k=5, timeout_s=120)
        if result.cached or time.monotonic() > give_up:
            return result
        await asyncio.sleep(0.3)


async def test_workers_serve_their_profile_to_a_request_naming_none_and_cache_it_under_it(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"cache_ttl_s": 600.0})
    tuned = settings.model_copy(update={"profile": profile_file(tmp_path, "tuned", TUNED)})
    other = settings.model_copy(update={"profile": profile_file(tmp_path, "other", "dense+ce@2")})

    async with running_workers(tuned), RankstreamClient(tuned) as client:
        first = await client.query(QUERY, top_k=5, timeout_s=120)
        repeated = await until_cached(client)
    assert not first.cached
    assert stage_names(first) == ["ce@3/best64~0.5"]
    assert first.retrieval.mode == "hybrid"
    # The answer says how it was made: the fusion's weight, and the profile that planned it.
    assert first.retrieval.fusion_weight == 0.6
    assert tuned.profile is not None
    assert first.profile == load_profile(tuned.profile).digest
    assert [doc.stage for doc in first.results] == ["ce@3/best64~0.5"] * 3 + ["retrieval"] * 2
    # Convex fusion with 0.6 on dense: the best fused score is at least 0.6 (the dense top hit
    # alone gives that), where reciprocal rank fusion's is at most 2/61.
    assert max(doc.retrieval_score for doc in first.results) >= 0.6
    # Interpolated scores are blends of two min-max normalised lists: within [0, 1].
    assert all(0.0 <= doc.score <= 1.0 for doc in first.results[:3])
    assert repeated.cached, "the profile's answer was never served from the cache"
    assert repeated.profile == first.profile
    assert ids(repeated) == ids(first)

    under_other = await ask(other)
    unprofiled = await ask(settings)
    named_without_profile = await ask(settings, pipeline=TUNED)
    back = await ask(tuned)

    assert not under_other.cached
    assert (stage_names(under_other), under_other.retrieval.mode) == (["ce@2"], "dense")
    assert under_other.profile not in (None, first.profile)
    assert under_other.retrieval.fusion_weight is None
    assert not unprofiled.cached
    assert stage_names(unprofiled) == [f"ce@{settings.default_depth}"]
    # The same plan asked by name, of workers serving no profile, is keyed apart from the
    # profile's answer: the key holds the profile the plan came from.
    assert stage_names(named_without_profile) == ["ce@3/best64~0.5"]
    assert not named_without_profile.cached
    assert named_without_profile.profile is None
    assert named_without_profile.retrieval.fusion_weight == 0.6
    # ... while the profile's own answer is still there for workers serving it again.
    assert back.cached
    assert ids(back) == ids(first)


async def test_convex_hybrid_is_the_fusion_of_the_stores_own_dense_and_bm25_lists(
    settings: Settings,
) -> None:
    convex, by_rank = await answers(settings, 10, "hybrid~0.5", "hybrid")

    store = DocumentStore.from_settings(settings)
    vector = load_embedder(settings).embed_queries([QUERY])[0]
    depth = settings.hybrid_fusion_depth
    dense = await store.search(QUERY, vector, depth, SearchMode.DENSE)
    bm25 = await store.search(QUERY, None, depth, SearchMode.BM25)
    dense_hits = [(hit.doc_id, hit.score) for hit in dense.hits]
    bm25_hits = [(hit.doc_id, hit.score) for hit in bm25.hits]
    expected = fuse(dense_hits, bm25_hits, "convex", 0.5, 0.5)[:10]
    expected_by_rank = fuse(dense_hits, bm25_hits, "rrf")[:10]

    assert convex.retrieval.mode == "hybrid"
    assert not convex.stages
    assert ids(convex) == [doc for doc, _ in expected]
    assert [doc.retrieval_score for doc in convex.results] == pytest.approx(
        [score for _, score in expected], abs=1e-4
    )
    assert ids(by_rank) == [doc for doc, _ in expected_by_rank]
    # This query tells the two fusions apart: the check above could not pass by rank fusion.
    assert [doc for doc, _ in expected] != [doc for doc, _ in expected_by_rank]


async def test_a_best_window_stage_scores_the_window_that_holds_the_query(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"reranker_model": FP32})
    best, head = await answers(settings, 5, "dense+ce@5/best16", "dense+ce@5/doc16")

    (stage,) = best.stages
    assert (stage.name, stage.candidates, stage.pairs) == ("ce@5/best16", 5, 5)
    assert stage_names(head) == ["ce@5/doc16"]
    assert [doc.stage for doc in best.results] == ["ce@5/best16"] * 5

    model = load_cross_encoder(settings)
    codec = model.tokenizer
    query = codec.encode_query(QUERY)
    texts = [doc.text or "" for doc in best.results]
    documents = codec.encode_documents(texts)
    windows = plan_pairs(codec, query, documents, DocumentBudget(16, "best"))
    heads = plan_pairs(codec, query, documents, DocumentBudget(16, "head"))
    expected = windows.candidate_scores(model.score(windows.encodings))

    assert stage.over_budget == sum(len(document) > 16 for document in documents) > 0
    assert [doc.score for doc in best.results] == pytest.approx(expected, abs=1e-3)
    moved = [w.ids != h.ids for w, h in zip(windows.encodings, heads.encodings, strict=True)]
    assert any(moved), "every best window was the head: the check above could not fail"
    head_scores = {doc.doc_id: doc.score for doc in head.results}
    assert any(
        abs(head_scores[doc.doc_id] - doc.score) > 1e-2
        for doc, was_moved in zip(best.results, moved, strict=True)
        if was_moved
    )


def min_max(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(value - low) / (high - low) for value in values]


async def test_an_interpolating_stage_blends_its_scores_with_the_order_it_received(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"reranker_model": FP32})
    plain, blended = await answers(settings, 8, "dense+ce@8", "dense+ce@8~0.3")

    assert stage_names(blended) == ["ce@8~0.3"]
    assert [doc.stage for doc in blended.results] == ["ce@8~0.3"] * 8
    # The plain stage's scores are the model's; in retrieval order, blend them by hand.
    received = sorted(plain.results, key=lambda doc: doc.retrieval_rank)
    model = min_max([doc.score for doc in received])
    before = min_max([doc.retrieval_score for doc in received])
    blend = [0.3 * m + 0.7 * b for m, b in zip(model, before, strict=True)]
    expected = sorted(zip(received, blend, strict=True), key=lambda pair: -pair[1])

    assert ids(blended) == [doc.doc_id for doc, _ in expected]
    assert [doc.score for doc in blended.results] == pytest.approx(
        [score for _, score in expected], abs=1e-4
    )
    assert ids(blended) != ids(plain), "the blend did not move this query: it could not fail"
