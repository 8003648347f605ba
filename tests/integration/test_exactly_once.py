"""Exactly once from the client's view, with no wasted work, on a real nats-server, real
workers and the packaged models: an answer is cached before it is sent, a redelivered request
already answered is not worked on again, a publish JetStream does not confirm is asked again
(not the whole request), a cache that cannot be read is a miss, and a non-finite score fails
only the request it belongs to. (SIGTERM's hand-back is in test_faults.py: worker processes.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import numpy as np
import pytest
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import ErrorCode, QueryFailedError
from rankstream.metrics import Metrics
from rankstream.models.onnx_cross_encoder import OnnxCrossEncoder
from rankstream.models.registry import load_cross_encoder
from rankstream.wire.contract import QueryRequest, RankedResult, RerankStage, StageTimings, now_ms
from rankstream.wire.handoff import Candidate, CandidateSet
from rankstream.wire.streams import ensure_streams
from rankstream.wire.subjects import Subjects
from rankstream.workers.app import WorkerKind, running_workers
from rankstream.workers.delivery import work_queue_subscription
from rankstream.workers.replies import ReplySender
from tests.plans import plan_for

pytestmark = pytest.mark.integration

QUERY = "What causes the seasons on Earth?"


async def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


@pytest.mark.parametrize("depth", [0, 5], ids=["answered-by-retrieval", "answered-by-rerank"])
async def test_an_answer_is_in_the_cache_before_it_is_sent(settings: Settings, depth: int) -> None:
    """One connection sees the cache write and the answer in the order the server got them:
    the write first, so a repeat sent the moment the answer arrives is a hit."""
    settings = settings.model_copy(update={"cache_ttl_s": 60.0})
    subjects = Subjects.from_settings(settings)
    seen: list[str] = []

    async def on_message(message: Msg) -> None:
        seen.append("cache" if message.subject.startswith("$KV.") else "answer")

    async with running_workers(settings), RankstreamClient(settings) as client:
        watcher = await nats.connect(settings.effective_nats_url)
        await watcher.subscribe(f"$KV.{subjects.cache_bucket}.>", cb=on_message)
        await watcher.subscribe(client.reply_subject, cb=on_message)
        await watcher.flush()
        first = await client.query(QUERY, top_k=3, depth=depth)
        repeat = await client.query(QUERY, top_k=3, depth=depth)
        await watcher.flush()
        await watcher.close()
    assert not first.cached
    assert seen[:2] == ["cache", "answer"]
    assert repeat.cached


def candidate_set_for(settings: Settings) -> CandidateSet:
    subjects = Subjects.from_settings(settings)
    request = QueryRequest(
        query=QUERY, top_k=2, stages=[RerankStage(depth=2)], timeout_ms=60_000,
        reply_to=subjects.results_for("exactly-once"), created_at_ms=now_ms(),
    )  # fmt: skip
    return CandidateSet(
        plan=plan_for(settings, request),
        candidates=[
            Candidate(
                doc_id=f"d{i}",
                text=f"passage {i} on the tilt of the earth",
                retrieval_score=1 / i,
                retrieval_rank=i,
            )
            for i in (1, 2)
        ],
        timings_ms=StageTimings(),
        embedder_model="test",
    )


async def test_a_redelivered_request_already_answered_is_acknowledged_without_scoring(
    settings: Settings,
) -> None:
    """A replica answers a candidate set and stops before acknowledging it (the test plays
    it, answering through the workers' own ReplySender); JetStream delivers the candidate set
    again, to a real rerank worker, which acknowledges it without scoring or answering."""
    subjects = Subjects.from_settings(settings)
    stream, durable = subjects.streams.candidates, subjects.durable("rerank")
    candidate_set = candidate_set_for(settings)
    await ensure_streams(settings)
    connection = await nats.connect(settings.effective_nats_url)
    js = connection.jetstream()
    answers: list[bytes] = []

    async def on_answer(message: Msg) -> None:
        answers.append(message.data)

    await connection.subscribe(candidate_set.plan.reply_to, cb=on_answer)
    config: ConsumerConfig = work_queue_subscription(settings, "", stream, durable)["config"]
    config.durable_name = durable
    await js.add_consumer(stream, config)
    await js.publish(subjects.candidates, candidate_set.model_dump_json().encode())
    held = await js.pull_subscribe_bind(durable=durable, stream=stream)
    (first_delivery,) = await held.fetch(1, timeout=10)
    dying_replica = NatsBroker(settings.effective_nats_url)
    await dying_replica.start()
    replies = ReplySender(dying_replica, subjects, "rerank", Metrics())
    answer = RankedResult(
        request_id=candidate_set.plan.request_id, query=QUERY, results=[], reranked=0,
        model_id="a replica that stopped", embedder_model="test", timings_ms=StageTimings(),
        batch_pairs=0, batch_requests=0,
    )  # fmt: skip
    await replies.answer(candidate_set.plan, answer)
    await dying_replica.stop()

    metrics = Metrics()
    async with running_workers(settings, [WorkerKind.RERANK], metrics=metrics):
        await first_delivery.nak()
        give_up = time.monotonic() + 30
        while (info := await js.consumer_info(stream, durable)).num_ack_pending or info.num_pending:
            assert time.monotonic() < give_up, info
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # an answer published at the ack would be here by now
    await connection.close()
    assert info.delivered.consumer_seq == 2  # it was delivered again ...
    assert len(answers) == 1  # ... and answered once: by the replica that stopped
    assert await sample(metrics, "rankstream_rerank_batch_pairs_count") == 0
    assert await sample(metrics, "rankstream_redeliveries_answered_total", worker="rerank") == 1


async def test_a_candidate_set_jetstream_does_not_confirm_is_published_again_not_searched_again(
    settings: Settings,
) -> None:
    """The candidates stream is gone for 1.5 s (as during a stream leader election on a
    cluster): the retrieval worker publishes the candidate set again until it lands, and
    embeds and searches the query once."""
    subjects = Subjects.from_settings(settings)
    metrics = Metrics()
    async with (
        running_workers(settings, [WorkerKind.RETRIEVAL], metrics=metrics),
        RankstreamClient(settings) as client,
    ):
        connection = await nats.connect(settings.effective_nats_url)
        js = connection.jetstream()
        await js.delete_stream(subjects.streams.candidates)
        request = client.request(QUERY, top_k=3, depth=3, timeout_s=60)
        await js.publish(subjects.queries, request.model_dump_json().encode())
        await asyncio.sleep(1.5)
        await ensure_streams(settings)

        async def forwarded() -> int:
            return (await js.stream_info(subjects.streams.candidates)).state.messages

        give_up = time.monotonic() + 30
        while not await forwarded():
            assert time.monotonic() < give_up, "the candidate set never reached its stream"
            await asyncio.sleep(0.1)
        info = await js.consumer_info(subjects.streams.queries, subjects.durable("retrieval"))
        await connection.close()
    assert info.delivered.consumer_seq == 1, "the query was delivered again"
    assert await sample(metrics, "rankstream_retrieval_requests_total") == 1


async def test_a_cache_that_cannot_be_read_is_a_counted_miss_not_a_failed_request(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"cache_ttl_s": 60.0})
    subjects = Subjects.from_settings(settings)
    metrics = Metrics()
    async with (
        running_workers(settings, metrics=metrics),
        RankstreamClient(settings) as client,
    ):
        connection = await nats.connect(settings.effective_nats_url)
        js = connection.jetstream()
        await js.delete_stream(f"KV_{subjects.cache_bucket}")
        result = await client.query(QUERY, top_k=3, depth=3, timeout_s=15)
        info = await js.consumer_info(subjects.streams.queries, subjects.durable("retrieval"))
        await connection.close()
    assert not result.cached
    assert info.delivered.consumer_seq == 1, "the query was delivered again"
    assert await sample(metrics, "rankstream_cache_errors_total", operation="read") >= 1
    misses = await sample(metrics, "rankstream_cache_requests_total", outcome="miss")
    assert misses == 1


class PoisonedSession:
    """The packaged cross-encoder's onnxruntime session, returning NaN for every pair that
    holds the token `poison` and the model's own logits for the others."""

    def __init__(self, session: Any, poison: int) -> None:
        self._session, self._poison = session, poison

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        logits, *rest = self._session.run(outputs, feeds)
        poisoned = (feeds["input_ids"] == self._poison).any(axis=1)
        logits = np.where(poisoned.reshape(-1, 1), np.float32("nan"), logits)
        return [logits, *rest]


async def test_a_non_finite_score_fails_only_the_request_its_pair_belongs_to(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"max_batch_wait_ms": 300.0})
    model = load_cross_encoder(settings)
    assert isinstance(model, OnnxCrossEncoder)
    (poison_ids,) = model.tokenizer.encode_documents(["poison"])
    model._session = PoisonedSession(model._session, poison_ids[0])
    clean = ["the tilt of the earth makes the seasons", "summer is warm"]
    async with (
        running_workers(settings, [WorkerKind.RERANK], cross_encoder=model),
        RankstreamClient(settings) as client,
    ):
        answered, failed = await asyncio.gather(
            client.rerank("seasons", clean),
            client.rerank("seasons", [*clean, "poison ivy"]),
            return_exceptions=True,
        )
    assert isinstance(answered, RankedResult), answered
    assert answered.batch_requests == 2, "the two requests did not share a model call"
    assert all(np.isfinite(doc.score) for doc in answered.results)
    assert isinstance(failed, QueryFailedError)
    assert failed.code == ErrorCode.MODEL_ERROR
    assert "non-finite" in str(failed)
