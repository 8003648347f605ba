"""The whole pipeline on real components: nats-server with JetStream, LanceDB, packaged models."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import ErrorCode, QueryFailedError, QueryTimeoutError
from rankstream.models.base import score_pairs
from rankstream.models.registry import load_cross_encoder
from rankstream.planning.scorers import MINILM_RERANKER_FP32, MINILM_RERANKER_INT8, PACKAGED_PREFIX
from rankstream.retrieval.corpus import read_documents, sample_corpus_path, sample_queries
from rankstream.wire.contract import (
    REPLY_ADAPTER,
    ErrorResult,
    QueryRequest,
    RankedResult,
    RerankStage,
    StageTimings,
    now_ms,
)
from rankstream.wire.handoff import Candidate, CandidateSet
from rankstream.wire.subjects import Subjects
from rankstream.workers.app import running_workers
from tests.plans import plan_for

pytestmark = pytest.mark.integration

FP32 = PACKAGED_PREFIX + MINILM_RERANKER_FP32
INT8 = PACKAGED_PREFIX + MINILM_RERANKER_INT8
DEPTH = 10
CONCURRENT = 20


async def twenty_concurrent_queries(settings: Settings) -> list[RankedResult]:
    texts = [q.text for q in sample_queries()]
    async with running_workers(settings), RankstreamClient(settings) as client:
        return await asyncio.gather(
            *(
                client.query(texts[i % len(texts)], top_k=DEPTH, depth=DEPTH, timeout_s=120)
                for i in range(CONCURRENT)
            )
        )


def pairs_of(result: RankedResult) -> list[tuple[str, str]]:
    """The (query, document) pairs of an answer that carries its texts."""
    texts = [doc.text for doc in result.results]
    assert all(text is not None for text in texts), "asked with return_documents"
    return [(result.query, text) for text in texts if text is not None]


def scores_alone(settings: Settings, result: RankedResult) -> list[float]:
    """The same model, in process, scoring only this request's pairs."""
    model = load_cross_encoder(settings)
    return score_pairs(model, pairs_of(result))


async def test_concurrent_queries_are_all_answered_batched_together_and_scored_exactly(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"reranker_model": FP32, "max_batch_wait_ms": 20})
    results = await twenty_concurrent_queries(settings)

    assert len(results) == CONCURRENT
    assert len({r.request_id for r in results}) == CONCURRENT
    assert all(len(r.results) == DEPTH and r.reranked == DEPTH for r in results)
    assert max(r.batch_requests for r in results) > 1, "no model call mixed two requests"
    model = load_cross_encoder(settings)
    worst = 0.0
    for result in results:
        alone = score_pairs(model, pairs_of(result))
        through_pipeline = [doc.score for doc in result.results]
        assert through_pipeline == pytest.approx(alone, abs=1e-4)
        assert through_pipeline == sorted(through_pipeline, reverse=True)
        worst = max(worst, *(abs(p - a) for p, a in zip(through_pipeline, alone, strict=True)))
    print(f"\nfp32: pipeline vs alone, max |difference| {worst:.2e} over {CONCURRENT} requests")


async def test_int8_scores_move_with_batch_mates_and_the_drift_is_bounded(
    settings: Settings,
) -> None:
    """The packaged int8 model quantizes activations per batch: measured, not hidden."""
    settings = settings.model_copy(update={"reranker_model": INT8, "max_batch_wait_ms": 20})
    results = await twenty_concurrent_queries(settings)

    model = load_cross_encoder(settings)
    drifts, reordered = [], 0
    for result in results:
        alone = score_pairs(model, pairs_of(result))
        drifts += [abs(doc.score - a) for doc, a in zip(result.results, alone, strict=True)]
        reordered += alone != sorted(alone, reverse=True)
    mixed = [r for r in results if r.batch_requests > 1]
    print(
        f"\nint8 drift over {len(drifts)} pairs ({len(mixed)}/{len(results)} requests in mixed "
        f"batches): max {max(drifts):.3f}, mean {sum(drifts) / len(drifts):.3f}; "
        f"{reordered} of {len(results)} rankings differ from scoring the request alone"
    )
    assert mixed, "no mixed batch: the drift was not exercised"
    assert max(drifts) < 1.5


async def test_stage_timings_are_disjoint_and_add_up_to_at_most_the_total(
    settings: Settings,
) -> None:
    async with running_workers(settings), RankstreamClient(settings) as client:
        result = await client.query("What causes the seasons on Earth?", top_k=3, depth=5)
    timings = result.timings_ms.model_dump()
    total = timings.pop("total")
    assert all(value >= 0 for value in timings.values())
    assert timings["embed"] > 0
    assert timings["inference"] > 0
    assert sum(timings.values()) <= total


async def test_depth_zero_answers_in_retrieval_order_without_the_reranker(
    settings: Settings,
) -> None:
    async with running_workers(settings), RankstreamClient(settings) as client:
        result = await client.query("How does a heat pump heat a house?", top_k=4, depth=0)
    assert result.reranked == 0
    assert [d.retrieval_rank for d in result.results] == [1, 2, 3, 4]
    assert result.timings_ms.inference == 0


async def test_a_depth_over_the_limit_gets_an_invalid_request_error(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_depth": 5})
    async with running_workers(settings), RankstreamClient(settings) as client:
        with pytest.raises(QueryFailedError) as failure:
            await client.query("seasons", depth=6)
    assert failure.value.code == ErrorCode.INVALID_REQUEST


async def test_a_client_with_a_short_timeout_gets_the_degraded_answer_not_a_timeout(
    settings: Settings,
) -> None:
    """Reranking every sample passage (61 at depth 100) beside a ~200-token query takes
    seconds of model time on a 2-core CPU (a one-word query let a fast machine finish in
    time): the worker cuts it short a margin before the 0.8 s deadline, so the retrieval
    order reaches a client waiting exactly the request's timeout."""
    long_query = "how do the seasons change over the course of a year " * 18
    async with running_workers(settings), RankstreamClient(settings) as client:
        result = await client.query(long_query, top_k=5, depth=100, timeout_s=0.8)
    assert result.degraded
    assert result.reranked == 0
    assert result.timings_ms.total < 800


async def test_a_client_clock_far_ahead_does_not_disable_the_deadline(settings: Settings) -> None:
    """A `created_at_ms` in the far future would put the deadline out of reach (no load
    shedding, no degrading): the workers count from when they received it instead, so the
    same slow request as above is still cut short at its 0.8 s."""
    long_query = "how do the seasons change over the course of a year " * 18
    async with running_workers(settings), RankstreamClient(settings) as client:
        request = client.request(long_query, top_k=5, depth=100, timeout_s=0.8)
        ahead = request.model_copy(update={"created_at_ms": 1e15})
        started = time.monotonic()
        reply = await client.send(ahead, wait_s=30)
    assert isinstance(reply, RankedResult)
    assert reply.degraded
    assert time.monotonic() - started < 5


async def test_a_cascade_over_the_pair_cap_is_refused_at_once(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_request_pairs": 16})
    documents = [f"passage {i} on the seasons" for i in range(20)]
    async with running_workers(settings), RankstreamClient(settings) as client:
        started = time.monotonic()
        with pytest.raises(QueryFailedError, match="MAX_REQUEST_PAIRS") as failure:
            await client.rerank("seasons", documents)
        with pytest.raises(QueryFailedError, match="MAX_REQUEST_PAIRS"):
            await client.query("seasons", pipeline="dense+ce@10/maxp64")  # 4 windows each
    assert failure.value.code == ErrorCode.INVALID_REQUEST
    assert time.monotonic() - started < 5


async def test_a_large_request_is_served_among_a_stream_of_small_ones(settings: Settings) -> None:
    """The pair budget admits first come, first served: a request for all of it waits for
    the small requests ahead of it, not for every small request that arrives after it."""
    budget = 48
    settings = settings.model_copy(
        update={"max_inflight_pairs": budget, "max_request_pairs": budget, "shed_load": False}
    )
    documents = [f"passage {i}: the tilt of the earth makes the seasons" for i in range(budget)]
    async with running_workers(settings), RankstreamClient(settings) as client:
        stop = asyncio.Event()

        async def small_requests() -> int:
            answered = 0
            while not stop.is_set():
                await client.rerank("seasons", documents[:8], timeout_s=60)
                answered += 1
            return answered

        streams = [asyncio.create_task(small_requests()) for _ in range(8)]
        await asyncio.sleep(2.0)  # eight small requests at a time keep the budget full
        started = time.monotonic()
        large = await client.rerank("seasons", documents, timeout_s=20)
        waited = time.monotonic() - started
        stop.set()
        answered = await asyncio.gather(*streams)
    assert not large.degraded, "the large request starved behind the small ones"
    assert large.reranked == budget
    assert waited < 20
    assert sum(answered) > 8, "small requests kept coming while the large one waited"


async def test_a_request_past_its_deadline_gets_an_expired_error(settings: Settings) -> None:
    async with running_workers(settings), RankstreamClient(settings) as client:
        request = client.request("seasons", depth=5).model_copy(update={"created_at_ms": 0.0})
        reply = await client.send(request.model_copy(update={"timeout_ms": 60_000}))
    assert isinstance(reply, ErrorResult)
    assert reply.code == ErrorCode.EXPIRED


async def test_a_missing_table_gets_a_store_error(settings: Settings) -> None:
    settings = settings.model_copy(update={"table": "no_such_table"})
    async with running_workers(settings), RankstreamClient(settings) as client:
        with pytest.raises(QueryFailedError) as failure:
            await client.query("seasons")
    assert failure.value.code == ErrorCode.STORE_ERROR


async def test_the_client_times_out_with_a_clear_error_when_no_worker_answers(
    settings: Settings,
) -> None:
    from rankstream.wire.streams import ensure_streams

    await ensure_streams(settings)
    async with RankstreamClient(settings) as client:
        with pytest.raises(QueryTimeoutError, match="within 300 ms"):
            await client.query("anyone there?", timeout_s=0.3)


async def publish_candidates_past_their_deadline(settings: Settings) -> RankedResult | ErrorResult:
    """A candidate set reaching the rerank worker after its request's deadline."""
    subjects = Subjects.from_settings(settings)
    request = QueryRequest(
        query="seasons", top_k=2, stages=[RerankStage(depth=2)], timeout_ms=1_000,
        reply_to=subjects.results_for("t"), created_at_ms=now_ms() - 5_000,
    )  # fmt: skip
    candidate_set = CandidateSet(
        plan=plan_for(settings, request),
        candidates=[
            Candidate(doc_id=f"d{i}", text=f"text {i}", retrieval_score=1 / i, retrieval_rank=i)
            for i in (1, 2)
        ],
        timings_ms=StageTimings(),
        embedder_model="test",
    )
    async with running_workers(settings):
        connection = await nats.connect(settings.effective_nats_url)
        replies = await connection.subscribe(request.reply_to)
        await connection.jetstream().publish(
            subjects.candidates, candidate_set.model_dump_json().encode()
        )
        message = await replies.next_msg(timeout=30)
        await connection.close()
    return REPLY_ADAPTER.validate_json(message.data)


async def test_a_deadline_missed_before_reranking_returns_the_retrieval_order_marked_degraded(
    settings: Settings,
) -> None:
    reply = await publish_candidates_past_their_deadline(settings)
    assert isinstance(reply, RankedResult)
    assert reply.degraded
    assert [d.doc_id for d in reply.results] == ["d1", "d2"]
    assert reply.reranked == 0


async def test_a_deadline_missed_before_reranking_can_be_an_expired_error_instead(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"on_deadline": "expired"})
    reply = await publish_candidates_past_their_deadline(settings)
    assert isinstance(reply, ErrorResult)
    assert reply.code == ErrorCode.EXPIRED


async def test_a_full_rerank_worker_leaves_work_in_the_stream_instead_of_its_memory(
    settings: Settings,
) -> None:
    """Backpressure through the consumer: a worker holds a bounded number of messages."""
    settings = settings.model_copy(update={"max_inflight_requests": 2, "max_inflight_pairs": 10})
    subjects = Subjects.from_settings(settings)
    async with running_workers(settings), RankstreamClient(settings) as client:
        texts = [q.text for q in sample_queries()]
        answers = asyncio.gather(
            *(client.query(texts[i % len(texts)], depth=10, timeout_s=120) for i in range(24))
        )
        await asyncio.sleep(1.5)
        connection = await nats.connect(settings.effective_nats_url)
        info = await connection.jetstream().consumer_info(
            subjects.streams.candidates, subjects.durable("rerank")
        )
        await connection.close()
        results = await answers
    # Two handlers, two buffered, one fetch of two: at most six messages out of the stream.
    assert info.num_ack_pending <= 3 * settings.max_inflight_requests
    assert info.num_pending > 0, "everything was pulled: the worker did not push back"
    assert len(results) == 24


async def test_a_client_can_bring_its_own_candidates_and_they_share_batches(
    settings: Settings,
) -> None:
    passages = [d.content for d in read_documents(sample_corpus_path())][:6]
    settings = settings.model_copy(update={"max_batch_wait_ms": 50, "max_batch_tokens": 16384})
    async with running_workers(settings), RankstreamClient(settings) as client:
        results = await asyncio.gather(
            *(client.rerank(q.text, passages, top_n=3) for q in sample_queries()[:4])
        )
    assert all(len(r.results) == 3 and r.reranked == 6 for r in results)
    assert all(r.retrieval.mode == "none" for r in results)
    assert max(r.batch_requests for r in results) > 1, "no model call mixed two requests"
    assert {d.doc_id for r in results for d in r.results} <= {str(i) for i in range(6)}
