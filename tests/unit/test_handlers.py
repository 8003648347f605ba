"""Both workers' handlers through FastStream's TestNatsBroker, with fake backends: what a
request gets back, in every case the handlers decide. No NATS server, no model, no store.

TestNatsBroker runs a subscriber inline when something is published to its subject, so a
query published here runs the retrieval handler, whose candidate set runs the rerank handler,
whose answer reaches the `answers` collector below."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import JStream, NatsBroker, TestNatsBroker

from rankstream import (
    ErrorCode,
    ErrorResult,
    QueryRequest,
    RankedResult,
    RerankDocument,
    RerankRequest,
    Settings,
    StageTimings,
)
from rankstream.metrics import Metrics
from rankstream.models.base import TokenIds
from rankstream.planning.admission import Planner
from rankstream.stages import short_of_time
from rankstream.wire.contract import REPLY_ADAPTER, Depth, LongDocuments, RerankStage, now_ms
from rankstream.wire.handoff import Candidate, CandidateSet
from rankstream.wire.subjects import Subjects
from rankstream.workers.app import build_broker
from rankstream.workers.context import WorkerContext
from rankstream.workers.delivery import DeadLetter
from rankstream.workers.rerank import RerankWorker
from rankstream.workers.retrieval import RetrievalWorker
from tests.unit.fakes import ListStore, OverlapCrossEncoder, WordEmbedder

PASSAGES = {
    "planes": "Contrails form when hot humid jet exhaust freezes into ice crystals.",
    "vaccines": "Vaccines train the immune system to recognise a pathogen.",
    "tides": "Tides are caused by the gravitational pull of the moon.",
    "contrails": "Why do planes leave contrails? Water vapour in exhaust condenses and "
    "freezes behind planes.",
}


@dataclass
class Pipeline:
    settings: Settings
    broker: NatsBroker
    metrics: Metrics
    subjects: Subjects
    cross_encoder: OverlapCrossEncoder
    answers: list[RankedResult | ErrorResult] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def request(
        self,
        query: str,
        depth: Depth = 3,
        max_doc_tokens: int | None = None,
        long_docs: LongDocuments | None = None,
        **fields: Any,
    ) -> QueryRequest:
        """A request for one `ce` stage over `depth` (0: none), unless `stages` is given."""
        if "stages" not in fields and depth == 0:
            fields["stages"] = []
        elif "stages" not in fields:
            stage = RerankStage(depth=depth, max_doc_tokens=max_doc_tokens, long_docs=long_docs)
            fields["stages"] = [stage]
        reply_to = self.subjects.results_for("unit")
        return QueryRequest(query=query, reply_to=reply_to, **{"top_k": 3, **fields})

    async def ask(self, request: QueryRequest) -> RankedResult | ErrorResult:
        await self.broker.publish(
            request, self.subjects.queries, stream=self.subjects.streams.queries
        )
        return self.answer_to(request.request_id)

    def answer_to(self, request_id: str) -> RankedResult | ErrorResult:
        (answer,) = (a for a in self.answers if a.request_id == request_id)
        return answer

    def count(self, worker: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "rankstream_requests_total", {"worker": worker, "outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
def settings(depth_policy_file: Path) -> Settings:
    return Settings(
        subject_prefix=f"u{uuid.uuid4().hex[:8]}",
        metrics_port=0,
        auto_depth_policy=depth_policy_file,
    )


@pytest.fixture
def cross_encoder() -> OverlapCrossEncoder:
    return OverlapCrossEncoder()


@pytest.fixture
async def pipeline(
    settings: Settings, cross_encoder: OverlapCrossEncoder
) -> AsyncIterator[Pipeline]:
    metrics = Metrics()
    broker = build_broker(settings, metrics)
    subjects = Subjects.from_settings(settings)
    context = WorkerContext(settings, broker, metrics)
    retrieval = RetrievalWorker(context, embedder=WordEmbedder(), store=ListStore(PASSAGES))
    rerank = RerankWorker(context, model=cross_encoder)
    wired = Pipeline(settings, broker, metrics, subjects, cross_encoder)

    @broker.subscriber(
        f"{subjects.results_root}.>", stream=JStream(subjects.streams.results, declare=False)
    )
    async def collect_answer(body: dict[str, Any]) -> None:
        wired.answers.append(REPLY_ADAPTER.validate_python(body))

    @broker.subscriber(
        subjects.dead_letters, stream=JStream(subjects.streams.dead_letters, declare=False)
    )
    async def collect_dead_letter(letter: DeadLetter) -> None:
        wired.dead_letters.append(letter)

    async with TestNatsBroker(broker):
        await retrieval.start()
        await rerank.start()
        try:
            yield wired
        finally:
            await rerank.stop()
            await retrieval.stop()


async def test_a_query_is_retrieved_then_reranked_by_the_cross_encoder(pipeline: Pipeline) -> None:
    answer = await pipeline.ask(pipeline.request("why do planes leave contrails"))

    assert isinstance(answer, RankedResult)
    assert [doc.doc_id for doc in answer.results][:1] == ["contrails"]
    assert answer.reranked == 3
    assert answer.model_id == "fake:overlap"
    assert answer.embedder_model == "fake:words"
    assert answer.results == sorted(answer.results, key=lambda d: -d.score)
    assert {"embed", "search", "inference", "total"} <= {
        stage for stage, ms in answer.timings_ms.model_dump().items() if ms > 0
    }
    assert pipeline.count("retrieval", "forwarded") == 1
    assert pipeline.count("rerank", "ok") == 1


async def test_depth_zero_answers_in_retrieval_order_without_the_cross_encoder(
    pipeline: Pipeline,
) -> None:
    warm_up_batches = len(pipeline.cross_encoder.batches)

    answer = await pipeline.ask(pipeline.request("tides and the moon", depth=0))

    assert isinstance(answer, RankedResult)
    assert answer.reranked == 0
    assert answer.model_id == "none"
    assert [d.retrieval_rank for d in answer.results] == [1, 2, 3]
    assert len(pipeline.cross_encoder.batches) == warm_up_batches


@pytest.mark.parametrize("depth", [0, 3])
async def test_an_answer_without_documents_has_the_same_ids_and_scores_and_no_texts(
    pipeline: Pipeline, depth: int
) -> None:
    with_texts = await pipeline.ask(pipeline.request("planes and contrails", depth=depth))
    without = await pipeline.ask(
        pipeline.request("planes and contrails", depth=depth, return_documents=False)
    )

    assert isinstance(with_texts, RankedResult)
    assert isinstance(without, RankedResult)
    assert all(doc.text for doc in with_texts.results)
    assert [doc.text for doc in without.results] == [None] * len(with_texts.results)
    assert [(d.doc_id, d.score) for d in without.results] == [
        (d.doc_id, d.score) for d in with_texts.results
    ]


async def test_a_blank_query_is_refused_by_retrieval_and_dead_lettered(pipeline: Pipeline) -> None:
    answer = await pipeline.ask(pipeline.request("   "))

    assert isinstance(answer, ErrorResult)
    assert answer.code == ErrorCode.INVALID_REQUEST
    assert answer.worker == "retrieval"
    (letter,) = pipeline.dead_letters
    assert letter.worker == "retrieval"
    assert letter.request_id == answer.request_id
    assert pipeline.count("retrieval", "invalid_request") == 1


async def test_candidates_over_the_limit_are_refused_by_the_rerank_worker(
    pipeline: Pipeline, settings: Settings
) -> None:
    request = pipeline.request("tides")
    plan = Planner(settings).plan_query(
        request, received_at_ms=now_ms(), embedder_model="fake:words", table_version=None
    )
    candidate_set = CandidateSet(
        plan=plan,
        candidates=[
            Candidate(doc_id=str(i), text="t", retrieval_score=0.0, retrieval_rank=i + 1)
            for i in range(settings.max_depth + 1)
        ],
        timings_ms=StageTimings(),
        embedder_model="fake:words",
    )
    await pipeline.broker.publish(
        candidate_set, pipeline.subjects.candidates, stream=pipeline.subjects.streams.candidates
    )

    answer = pipeline.answer_to(request.request_id)
    assert isinstance(answer, ErrorResult)
    assert answer.code == ErrorCode.INVALID_REQUEST
    assert answer.worker == "rerank"
    assert pipeline.count("rerank", "invalid_request") == 1


async def test_a_request_already_past_its_deadline_is_expired_at_retrieval(
    pipeline: Pipeline,
) -> None:
    late = pipeline.request("tides", timeout_ms=1_000, created_at_ms=now_ms() - 5_000)

    answer = await pipeline.ask(late)

    assert isinstance(answer, ErrorResult)
    assert answer.code == ErrorCode.EXPIRED
    assert answer.worker == "retrieval"


async def test_a_slow_model_is_cut_short_before_the_deadline_so_the_answer_arrives_in_time(
    pipeline: Pipeline, settings: Settings
) -> None:
    pipeline.cross_encoder.seconds_per_pair = 1.0
    request = pipeline.request("planes", timeout_ms=1_000)
    sent = time.perf_counter()

    answer = await pipeline.ask(request)
    answered_ms = (time.perf_counter() - sent) * 1000

    assert isinstance(answer, RankedResult)
    assert answer.degraded
    assert answered_ms < request.timeout_ms, "the answer came after the client gave up"
    assert answered_ms > request.timeout_ms - 2 * settings.deadline_margin_ms


async def test_requests_the_queue_would_make_miss_their_deadline_are_answered_overloaded(
    pipeline: Pipeline,
) -> None:
    pipeline.cross_encoder.seconds_per_pair = 0.02  # 50 pairs/s: 1.25 s before the deadline
    await pipeline.ask(pipeline.request("planes", timeout_ms=10_000))  # is 62 pairs' worth
    burst = [pipeline.request("planes", timeout_ms=1_500) for _ in range(40)]  # 120 pairs

    await asyncio.gather(*(pipeline.ask(request) for request in burst))

    codes = [
        "ok" if isinstance(a, RankedResult) and not a.degraded else getattr(a, "code", "late")
        for a in (pipeline.answer_to(r.request_id) for r in burst)
    ]
    assert ErrorCode.OVERLOADED in codes
    assert "ok" in codes, "shedding refused requests it could have answered"
    assert pipeline.count("rerank", "overloaded") == codes.count(ErrorCode.OVERLOADED)


async def test_a_request_too_short_of_time_for_its_own_pairs_misses_its_deadline_not_overloaded(
    pipeline: Pipeline,
) -> None:
    pipeline.cross_encoder.seconds_per_pair = 0.2  # 3 pairs: 0.6 s, on an empty queue
    await pipeline.ask(pipeline.request("planes", timeout_ms=10_000))  # the speed is learnt
    short = pipeline.request("planes", timeout_ms=400)

    answer = await pipeline.ask(short)

    assert isinstance(answer, RankedResult)
    assert answer.degraded
    assert pipeline.count("rerank", "overloaded") == 0


def test_only_a_request_with_room_to_retry_is_told_overloaded() -> None:
    assert short_of_time(alone_s=0.0, left_s=0.01), "a deadline this close is expired"
    assert short_of_time(alone_s=0.1, left_s=0.15), "a retry at once would be late too"
    assert not short_of_time(alone_s=0.1, left_s=0.5)


async def test_each_pipeline_counts_on_its_own_registry(settings: Settings) -> None:
    first, second = Metrics(), Metrics()
    first.requests.labels(worker="rerank", outcome="ok").inc()

    assert (
        first.registry.get_sample_value(
            "rankstream_requests_total", {"worker": "rerank", "outcome": "ok"}
        )
        == 1
    )
    assert second.registry.get_sample_value(
        "rankstream_requests_total", {"worker": "rerank", "outcome": "ok"}
    ) in (None, 0.0)


async def test_bm25_and_hybrid_searches_are_served_and_reported(pipeline: Pipeline) -> None:
    for mode in ("bm25", "hybrid"):
        answer = await pipeline.ask(pipeline.request("planes contrails", retrieval=mode))

        assert isinstance(answer, RankedResult)
        assert answer.retrieval.mode == mode
        assert answer.results[0].doc_id == "contrails"
    assert (
        pipeline.metrics.registry.get_sample_value(
            "rankstream_retrieval_requests_total", {"mode": "hybrid"}
        )
        == 1
    )


async def test_a_cascade_reranks_the_top_of_each_stage_and_reports_every_stage(
    pipeline: Pipeline,
) -> None:
    stages = [RerankStage(depth=4), RerankStage(scorer="ce", depth=2)]
    answer = await pipeline.ask(pipeline.request("why do planes leave contrails", stages=stages))

    assert isinstance(answer, RankedResult)
    assert [(s.name, s.candidates, s.pairs) for s in answer.stages] == [
        ("ce@4", 4, 4), ("ce@2", 2, 2),
    ]  # fmt: skip
    assert [doc.stage for doc in answer.results[:3]] == ["ce@2", "ce@2", "ce@4"]
    assert answer.reranked == 4
    assert answer.timings_ms.inference == pytest.approx(sum(s.inference_ms for s in answer.stages))


async def test_auto_depth_is_chosen_within_its_bounds(
    pipeline: Pipeline, settings: Settings
) -> None:
    answer = await pipeline.ask(pipeline.request("planes", depth="auto", top_k=4))

    assert isinstance(answer, RankedResult)
    assert answer.retrieval.chosen_depth is not None
    assert 0 <= answer.retrieval.chosen_depth <= settings.max_auto_depth
    assert answer.reranked == min(answer.retrieval.chosen_depth, len(PASSAGES))


async def test_a_document_over_the_budget_is_cut_or_split_into_windows(
    pipeline: Pipeline,
) -> None:
    query = "why do planes leave contrails"
    head = await pipeline.ask(pipeline.request(query, depth=4, max_doc_tokens=8))
    maxp = await pipeline.ask(pipeline.request(query, depth=4, max_doc_tokens=8, long_docs="maxp"))

    assert isinstance(head, RankedResult)
    assert isinstance(maxp, RankedResult)
    (head_stage,), (maxp_stage,) = head.stages, maxp.stages
    assert head_stage.over_budget == maxp_stage.over_budget > 0
    assert head_stage.pairs == 4
    assert maxp_stage.pairs > 4
    assert maxp_stage.truncated_tokens < head_stage.truncated_tokens


async def test_stored_token_ids_spare_the_rerank_worker_tokenizing_documents(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenized: list[int] = []
    codec = pipeline.cross_encoder.tokenizer
    real = codec.encode_documents

    def counting(documents: Sequence[str]) -> list[TokenIds]:
        tokenized.append(len(documents))
        return real(documents)

    monkeypatch.setattr(codec, "encode_documents", counting)

    answer = await pipeline.ask(pipeline.request("tides", depth=3))

    assert isinstance(answer, RankedResult)
    assert answer.reranked == 3
    assert sum(tokenized) == 0, "documents were tokenized again"


async def test_an_unknown_scorer_is_refused_before_any_search(pipeline: Pipeline) -> None:
    answer = await pipeline.ask(
        pipeline.request("tides", stages=[RerankStage(scorer="no-such-model", depth=2)])
    )

    assert isinstance(answer, ErrorResult)
    assert answer.code == ErrorCode.INVALID_REQUEST
    assert "no-such-model" in answer.message


async def test_candidates_a_caller_brings_are_reranked_without_retrieval(
    pipeline: Pipeline,
) -> None:
    request = RerankRequest(
        query="why do planes leave contrails",
        documents=[
            RerankDocument(text="Tides follow the moon.", id="tides"),
            RerankDocument(text="Planes leave contrails when exhaust vapour freezes."),
            RerankDocument(text="Vaccines train the immune system."),
        ],
        top_n=2,
        reply_to=pipeline.subjects.results_for("unit"),
    )

    await pipeline.broker.publish(
        request, pipeline.subjects.rerank, stream=pipeline.subjects.streams.rerank
    )

    answer = pipeline.answer_to(request.request_id)
    assert isinstance(answer, RankedResult)
    assert [(d.doc_id, d.retrieval_rank) for d in answer.results] == [("1", 2), ("tides", 1)]
    assert answer.reranked == 3
    assert answer.retrieval.mode == "none"
    assert pipeline.count("rerank", "ok") == 1
