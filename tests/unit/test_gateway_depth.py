"""What lets a rerank request bring 1,000 documents: the gateway's document limit follows
the workers' bounds, Cohere's long documents get a budget the pair cap can hold, and load
shedding predicts a request's time from its tokens, so 1,000 short pairs are not refused at
the speed long pairs were scored at."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import DeadlineExceededError, OverloadedError, RequestTooLargeError
from rankstream.models.base import PairEncoding
from rankstream.models.budgets import DocumentBudget
from rankstream.scheduling.admission import PairBudget
from rankstream.scheduling.batcher import BatchLimits, BatchStats
from rankstream.scheduling.deadlines import Deadline
from rankstream.scheduling.pair_scheduler import PairScheduler
from rankstream.stages import CrossEncoderStage, StageInput
from rankstream.wire.contract import now_ms
from rankstream.workers.gateway.service import Budget, GatewayService
from tests.unit.fakes import OverlapCrossEncoder


def service(**settings: Any) -> GatewayService:
    config = Settings(**settings)
    return GatewayService(config, RankstreamClient(config))


def test_the_gateway_takes_as_many_documents_as_the_workers() -> None:
    assert service().max_documents == 1000  # max_depth; the pair cap (2,048) is above it
    assert service(max_depth=5000).max_documents == 2048  # the pair cap: 1 pair a document
    assert service(gateway_max_texts=100).max_documents == 100
    with pytest.raises(RequestTooLargeError, match="1001 documents; at most 1000 per request"):
        service().check_count(1001)


def test_cohere_long_documents_use_the_best_chunk_within_the_pair_cap() -> None:
    gateway = service()  # 4 windows a document, 2,048 pairs a request
    assert gateway.chunked(512) == Budget(None, "maxp")  # 512 x 4 = 2,048 pairs
    assert gateway.chunked(513) == Budget(None, "best")  # one pair a document
    assert gateway.chunked(1000) == Budget(None, "best")
    assert gateway.chunked(10, max_tokens=256) == Budget(256, "head")  # Cohere cuts to it
    assert gateway.chunked(10, max_tokens=4096) == Budget(None, "maxp")  # Cohere's default


def pairs(count: int, tokens: int) -> list[PairEncoding]:
    return [PairEncoding(tuple(range(tokens)), (0,) * tokens) for _ in range(count)]


async def test_shedding_predicts_from_tokens_not_pairs() -> None:
    """After long pairs (32 of 480 tokens a second), 1,000 pairs of 30 tokens are predicted
    at the same tokens per second (~2 s), not the long pairs' 32 pairs a second (~31 s,
    past a 30 s deadline: refused)."""
    scheduler = PairScheduler(BatchLimits(max_items=64, max_padded_tokens=768, max_wait_s=0))
    assert scheduler.predicted_wait_s(1000) is None, "no speed known yet"
    scheduler._observe(BatchStats(items=32, requests=1, real_tokens=32 * 480,
                                  padded_tokens=32 * 480, seconds=1.0))  # fmt: skip
    assert scheduler.pairs_per_s == 32
    short = pairs(1000, 30)
    alone = scheduler.predicted_wait_s(sum(len(p) for p in short), queued=False)
    assert alone == pytest.approx(30_000 / (32 * 480))
    assert alone is not None
    assert alone < 30
    # Queued tokens ahead count too, by lane.
    async with scheduler.batcher:
        queued = scheduler.enqueue(pairs(10, 480), lane=1)
        assert scheduler.predicted_wait_s(0, lane=1) == pytest.approx(10 * 480 / (32 * 480))
        assert scheduler.predicted_wait_s(0, lane=0) == 0
        queued.cancel()
    await asyncio.sleep(0)


def stage_input(documents: list[str], seconds_left: float) -> StageInput:
    return StageInput(
        query="heat pump",
        documents=documents,
        token_ids=[None] * len(documents),
        tokenizer=None,
        budget=DocumentBudget(),
        deadline=Deadline(now_ms() + seconds_left * 1000),
    )


async def test_a_request_that_would_wait_for_room_past_its_deadline_is_shed_at_once() -> None:
    """The worker's pair budget is full (first come, first served): a request that could not
    be scored in time behind what is held and waiting is refused as overloaded now, not left
    to wait for room until its deadline passes."""
    budget = PairBudget(10)
    stage = CrossEncoderStage(
        OverlapCrossEncoder(),
        BatchLimits(max_items=64, max_padded_tokens=768, max_wait_s=0),
        budget,
    )
    stage.scheduler._observe(BatchStats(items=10, requests=1, real_tokens=100,
                                        padded_tokens=100, seconds=1.0))  # fmt: skip
    async with budget.hold(10, tokens=500):  # 5 s of work at 100 tokens/s
        assert budget.must_wait(1)
        assert budget.tokens_ahead == 500
        with pytest.raises(OverloadedError, match=r"about 5\.[0-9] s to score, [23]\.[0-9] s left"):
            await stage.score(stage_input(["a heat pump", "bread"], seconds_left=3))
        with pytest.raises(DeadlineExceededError):  # not even alone: 1,000 words in 3 s
            await stage.score(stage_input([" ".join(["heat"] * 1000)], seconds_left=3))
        assert budget.waiting == 0
    assert (budget.held, budget.held_tokens) == (0, 0)
