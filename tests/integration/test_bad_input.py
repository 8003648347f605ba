"""Bad input never kills a worker, never vanishes: it is answered with an error and kept as a
dead letter with its original bytes. Real nats-server, real workers."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsConnection
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import ErrorCode
from rankstream.metrics import Metrics
from rankstream.models.base import PairEncoding
from rankstream.models.registry import load_embedder
from rankstream.retrieval.corpus import read_documents
from rankstream.retrieval.store import DocumentStore
from rankstream.wire.contract import REPLY_ADAPTER, ErrorResult, QueryRequest, RankedResult
from rankstream.wire.subjects import Subjects
from rankstream.workers.app import running_workers
from rankstream.workers.delivery import DeadLetter
from rankstream.workers.rerank import RerankWorker
from tests.plans import plan_for

pytestmark = pytest.mark.integration


@dataclass
class Wire:
    """Raw access to the pipeline's subjects, beside two running workers."""

    settings: Settings
    subjects: Subjects
    connection: NatsConnection
    js: JetStreamContext
    replies: Subscription
    dead_letters: JetStreamContext.PullSubscription
    workers: list[Any]

    @property
    def reply_to(self) -> str:
        return self.subjects.results_for("raw")

    async def send(self, subject: str, payload: bytes) -> None:
        await self.js.publish(subject, payload)

    async def reply(self, within_s: float = 60) -> RankedResult | ErrorResult:
        message = await self.replies.next_msg(timeout=within_s)
        return REPLY_ADAPTER.validate_json(message.data)

    async def dead_letter(self) -> DeadLetter:
        (message,) = await self.dead_letters.fetch(1, timeout=30)
        await message.ack()
        return DeadLetter.model_validate_json(message.data)

    def query(self, **fields: Any) -> bytes:
        body = {"request_id": "r1", "query": "What causes the seasons?", "top_k": 3,
                "stages": [{"depth": 3}], "reply_to": self.reply_to, **fields}  # fmt: skip
        return json.dumps(body).encode()

    def plan(self) -> dict[str, Any]:
        """The plan of a valid `query()`, as a candidate set carries it."""
        request = QueryRequest.model_validate_json(self.query())
        return plan_for(self.settings, request).model_dump(mode="json")


@pytest.fixture
async def wire(settings: Settings) -> AsyncIterator[Wire]:
    settings = settings.model_copy(update={"max_message_bytes": 900_000})
    subjects = Subjects.from_settings(settings)
    async with running_workers(settings) as workers:
        connection = await nats.connect(settings.effective_nats_url)
        js = connection.jetstream()
        replies = await connection.subscribe(subjects.results_for("raw"))
        dead_letters = await js.pull_subscribe(subjects.dead_letters, durable="test-dlq")
        yield Wire(settings, subjects, connection, js, replies, dead_letters, workers)
        await connection.close()


async def assert_still_serving(wire: Wire) -> None:
    async with RankstreamClient(wire.settings) as client:
        result = await client.query("How do vaccines train the immune system?", depth=3)
    assert result.results


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"query": 123}, "query"),
        ({"schema_version": 1}, "schema_version"),
        ({"depth": 3}, "depth"),
        ({"query": ""}, "query"),
        ({"query": "x" * 100_000}, "characters"),
        ({"stages": [{"depth": 10_000}]}, "exceeds max_depth"),
        ({"timeout_ms": 10**12}, "max_timeout_ms"),
        ({"created_at_ms": "Infinity"}, "created_at_ms"),
        ({"top_k": 0}, "top_k"),
        ({"unexpected": True}, "unexpected"),
    ],
)
async def test_an_invalid_query_gets_an_invalid_request_error_and_a_dead_letter(
    wire: Wire, fields: dict[str, Any], reason: str
) -> None:
    payload = wire.query(**fields)
    await wire.send(wire.subjects.queries, payload)
    reply = await wire.reply()
    assert isinstance(reply, ErrorResult)
    assert reply.code == ErrorCode.INVALID_REQUEST
    assert reply.request_id == "r1"
    assert reason in reply.message
    letter = await wire.dead_letter()
    assert letter.code == ErrorCode.INVALID_REQUEST
    assert base64.b64decode(letter.payload_base64) == payload
    assert letter.request_id == "r1"
    await assert_still_serving(wire)


# A refusal comes before any retry: the first redelivery of a failed message waits 1 s, and
# a failure retried to the end is answered only after the whole backoff (51 s by default).
REFUSED_WITHIN_S = 5.0


def index_table_with_metadata(settings: Settings, tmp_path: Path) -> str:
    """A new table whose documents have a `year` (int64) beside their `title` (string)."""
    name = f"typed_{uuid.uuid4().hex[:8]}"
    corpus = tmp_path / "typed.jsonl"
    rows = [
        {"id": "y1", "title": "Seasons", "text": "Earth's tilt causes the seasons.", "year": 2021},
        {"id": "y2", "title": "Tides", "text": "The moon pulls the tides.", "year": 2015},
    ]
    corpus.write_text("\n".join(json.dumps(row) for row in rows))
    store = DocumentStore.from_settings(settings.model_copy(update={"table": name}))
    store.index(read_documents(corpus), load_embedder(settings))
    return name


async def test_a_filter_literal_its_column_cannot_hold_is_refused_at_once_not_retried(
    wire: Wire, tmp_path: Path
) -> None:
    table = index_table_with_metadata(wire.settings, tmp_path)
    refusals = {  # filter: what the error names
        "title = 1": "'title'",
        "year = '2020'": "'year'",
        "year = 2020.5": "'year'",
        "year >= 99999999999999999999": "'year'",
        "year = \u0663": "\u0663",  # an Arabic-Indic three: not a number of the grammar
    }
    for number, (text, named) in enumerate(refusals.items()):
        payload = wire.query(request_id=f"f{number}", table=table, filter=text)
        await wire.send(wire.subjects.queries, payload)
        reply = await wire.reply(within_s=REFUSED_WITHIN_S)
        assert isinstance(reply, ErrorResult)
        assert (reply.request_id, reply.code) == (f"f{number}", ErrorCode.INVALID_REQUEST)
        assert named in reply.message
        letter = await wire.dead_letter()
        assert (letter.request_id, letter.code) == (f"f{number}", ErrorCode.INVALID_REQUEST)
        assert letter.deliveries == 1
        assert base64.b64decode(letter.payload_base64) == payload
    await assert_still_serving(wire)


@pytest.mark.parametrize(
    "payload", [b"{not json", b"\xff\xfe\x00garbage", b"", b"[1, 2, 3]", b'"just a string"']
)
async def test_undecodable_bytes_are_kept_as_dead_letters_exactly(
    wire: Wire, payload: bytes
) -> None:
    await wire.send(wire.subjects.queries, payload)
    letter = await wire.dead_letter()
    assert base64.b64decode(letter.payload_base64) == payload
    assert letter.code == ErrorCode.INVALID_REQUEST
    assert "invalid message" in letter.reason
    assert not letter.truncated
    await assert_still_serving(wire)


async def test_an_oversized_message_is_refused_before_decoding(wire: Wire) -> None:
    payload = wire.query(query="y" * 950_000)  # under NATS's own 1 MiB limit
    await wire.send(wire.subjects.queries, payload)
    reply = await wire.reply()
    assert isinstance(reply, ErrorResult)
    assert "max_message_bytes" in reply.message
    letter = await wire.dead_letter()
    assert letter.reason.startswith("message of")
    assert letter.truncated
    assert letter.payload_bytes == len(payload)
    assert payload.startswith(base64.b64decode(letter.payload_base64))


async def test_ten_thousand_candidates_are_refused_by_the_rerank_worker(wire: Wire) -> None:
    candidates = [
        {"doc_id": f"d{i}", "text": "t", "retrieval_score": 0.5, "retrieval_rank": i + 1}
        for i in range(10_000)
    ]
    candidate_set = {"plan": wire.plan(), "candidates": candidates,
                     "timings_ms": {}, "embedder_model": "m"}  # fmt: skip
    payload = json.dumps(candidate_set, separators=(",", ":")).encode()
    await wire.send(wire.subjects.candidates, payload)
    reply = await wire.reply()
    assert isinstance(reply, ErrorResult)
    assert reply.code == ErrorCode.INVALID_REQUEST
    assert "10000 candidates" in reply.message
    await wire.dead_letter()
    await assert_still_serving(wire)


async def test_a_candidate_without_its_document_text_is_an_invalid_request(wire: Wire) -> None:
    candidate_set = {
        "plan": wire.plan(),
        "candidates": [{"doc_id": "d1", "retrieval_score": 0.5, "retrieval_rank": 1}],
        "timings_ms": {},
        "embedder_model": "m",
    }
    await wire.send(wire.subjects.candidates, json.dumps(candidate_set).encode())
    reply = await wire.reply()
    assert isinstance(reply, ErrorResult)
    assert "text" in reply.message


class NanModel:
    """A broken cross-encoder: every score NaN."""

    def __init__(self, real: Any) -> None:
        self.model_id = real.model_id
        self.max_length = real.max_length
        self.tokenizer = real.tokenizer

    def score(self, batch: Sequence[PairEncoding]) -> list[float]:
        return [float("nan")] * len(batch)


async def test_a_model_that_returns_nan_gives_a_model_error_and_the_worker_recovers(
    wire: Wire,
) -> None:
    rerank = next(w for w in wire.workers if isinstance(w, RerankWorker))
    runner = rerank._runners["ce"]
    real = runner.run
    runner.run = NanModel(rerank.model).score
    await wire.send(wire.subjects.queries, wire.query())
    reply = await wire.reply()
    assert isinstance(reply, ErrorResult)
    assert reply.code == ErrorCode.MODEL_ERROR
    assert "non-finite" in reply.message
    assert (await wire.dead_letter()).code == ErrorCode.MODEL_ERROR
    runner.run = real
    await asyncio.sleep(0)
    await assert_still_serving(wire)


async def test_a_reply_to_outside_the_results_subjects_is_refused_and_nothing_is_sent_there(
    settings: Settings,
) -> None:
    # A cache entry's subject: a worker may write there, so a request must not make it.
    settings = settings.model_copy(update={"cache_ttl_s": 600.0})
    subjects = Subjects.from_settings(settings)
    async with running_workers(settings):
        connection = await nats.connect(settings.effective_nats_url)
        try:
            js = connection.jetstream()
            bucket = await js.key_value(subjects.cache_bucket)
            await bucket.put("victim", b"the cached answer")
            elsewhere = f"{settings.subject_prefix}.inbox.someone"
            watched = await connection.subscribe(elsewhere)
            letters = await js.pull_subscribe(subjects.dead_letters, durable="test-dlq")
            for target in (f"$KV.{subjects.cache_bucket}.victim", elsewhere):
                body = {"request_id": "r1", "query": "What causes the seasons?", "top_k": 3,
                        "stages": [], "reply_to": target}  # fmt: skip
                await js.publish(subjects.queries, json.dumps(body).encode())
                (message,) = await letters.fetch(1, timeout=30)
                await message.ack()
                letter = DeadLetter.model_validate_json(message.data)
                assert letter.code == ErrorCode.INVALID_REQUEST
                assert "reply_to" in letter.reason
            with pytest.raises(nats.errors.TimeoutError):
                await watched.next_msg(timeout=1)
            assert (await bucket.get("victim")).value == b"the cached answer"
        finally:
            await connection.close()


async def test_a_full_dead_letter_stream_drops_new_letters_counted_while_requesters_get_errors(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"dead_letters_max_bytes": 1 << 20})
    subjects = Subjects.from_settings(settings)
    metrics = Metrics()
    sent = 6  # each dead letter keeps ~400 KB (the bytes, base64): the third fills 1 MiB
    async with running_workers(settings, metrics=metrics):
        connection = await nats.connect(settings.effective_nats_url)
        try:
            replies = await connection.subscribe(subjects.results_for("flood"))
            js = connection.jetstream()
            for number in range(sent):
                body = {"request_id": f"r{number}", "query": "x" * 300_000, "top_k": 3,
                        "reply_to": subjects.results_for("flood")}  # fmt: skip
                await js.publish(subjects.queries, json.dumps(body).encode())
                reply = REPLY_ADAPTER.validate_json((await replies.next_msg(timeout=30)).data)
                assert isinstance(reply, ErrorResult)
                assert reply.code == ErrorCode.INVALID_REQUEST
            kept = (await js.stream_info(subjects.streams.dead_letters)).state
            assert kept.bytes <= 1 << 20
            assert 0 < kept.messages < sent
            dropped = metrics.registry.get_sample_value(
                "rankstream_dead_letters_dropped_total", {"worker": "retrieval"}
            )
            assert dropped == sent - kept.messages
            assert f"dead-letter stream {subjects.streams.dead_letters} is full" in caplog.text
            # A message is terminated just after its error reply is sent: allow that moment.
            for _ in range(50):
                queue = (await js.stream_info(subjects.streams.queries)).state
                if queue.messages == 0:
                    break
                await asyncio.sleep(0.1)
            assert queue.messages == 0, "every refused request was taken off the queue"
        finally:
            await connection.close()
        async with RankstreamClient(settings) as client:
            assert (await client.query("How do vaccines train the immune system?", depth=3)).results
