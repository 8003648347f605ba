"""The readiness check's rules, over a stand-in for the client: which consumer states count
as a worker consuming, and that a storm of probes asks NATS once per cache period."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

from nats.js.api import ConsumerConfig, ConsumerInfo, SequenceInfo
from nats.js.errors import NotFoundError

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.workers.gateway.readiness import ReadinessProbe


def info(waiting: int, ack_pending: int = 0, delivered_ago_s: float | None = None) -> ConsumerInfo:
    now = datetime.datetime.now(datetime.UTC)
    last = None if delivered_ago_s is None else now - datetime.timedelta(seconds=delivered_ago_s)
    return ConsumerInfo(
        name="c",
        stream_name="s",
        config=ConsumerConfig(),
        created=now,
        delivered=SequenceInfo(consumer_seq=1, stream_seq=1, last_active=last),
        num_waiting=waiting,
        num_ack_pending=ack_pending,
        num_pending=0,
    )


class StandIn:
    """What ReadinessProbe uses of a RankstreamClient: `connected`, `consumer_info`; the
    answers by worker consumer (`retrieval`, `rerank`, `direct`: rerank-direct)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.connected = True
        self.answers = answers
        self.asked = 0

    async def consumer_info(self, stream: str, consumer: str, timeout_s: float) -> ConsumerInfo:
        self.asked += 1
        await asyncio.sleep(0.01)
        key = "direct" if consumer.endswith("-direct") else consumer.removeprefix("p-")
        answer = self.answers[key]
        if isinstance(answer, Exception):
            raise answer
        return cast(ConsumerInfo, answer)


def probe(answers: dict[str, Any], **settings: Any) -> tuple[ReadinessProbe, StandIn]:
    client = StandIn(answers)
    config = Settings(subject_prefix="p", **settings)
    return ReadinessProbe(config, cast(RankstreamClient, client)), client


async def test_a_worker_waiting_or_busy_counts_as_consuming() -> None:
    ready, _ = probe({"retrieval": info(1), "rerank": info(0, 3, 2.0), "direct": info(2)})
    result = await ready.check()
    assert result.ok, result.reason
    assert result.checks == {
        "nats_connected": True, "streams": True, "retrieval_workers": True, "rerank_workers": True
    }  # fmt: skip


async def test_held_messages_from_long_ago_are_not_a_worker() -> None:
    """A worker that died holding messages leaves them pending: not a sign of life once the
    last delivery is older than the ack wait."""
    ready, _ = probe(
        {"retrieval": info(1), "rerank": info(0, 3, 600.0), "direct": info(1)}, ack_wait_s=60
    )
    result = await ready.check()
    assert not result.ok
    assert result.checks["rerank_workers"] is False
    assert result.reason.startswith("no rerank worker is consuming P_CANDIDATES")


async def test_missing_streams_and_consumers_are_named() -> None:
    no_stream = NotFoundError(code=404, err_code=10059, description="stream not found")
    no_consumer = NotFoundError(code=404, err_code=10014, description="consumer not found")
    ready, _ = probe({"retrieval": no_stream, "rerank": no_consumer, "direct": info(1)})
    result = await ready.check()
    assert not result.ok
    assert result.checks["streams"] is False
    assert "stream P_QUERIES does not exist" in result.reason
    assert "no rerank worker has consumed P_CANDIDATES yet" in result.reason


async def test_only_the_workers_asked_for_are_required() -> None:
    ready, client = probe(
        {
            "retrieval": NotFoundError(code=404, err_code=10059),
            "rerank": info(1),
            "direct": info(1),
        },
        gateway_ready_workers=["rerank"],
    )
    assert (await ready.check()).ok
    assert client.asked == 2


async def test_a_storm_of_probes_asks_nats_once_per_period() -> None:
    ready, client = probe(
        {"retrieval": info(1), "rerank": info(1), "direct": info(1)}, gateway_ready_cache_s=60
    )
    results = await asyncio.gather(*(ready.check() for _ in range(200)))
    assert all(r.ok for r in results)
    assert client.asked == 3, "one consumer info per watched consumer, for all 200 probes"


async def test_not_connected_is_not_ready_without_asking() -> None:
    ready, client = probe({})
    client.connected = False
    result = await ready.check()
    assert (result.ok, result.checks) == (False, {"nats_connected": False})
    assert client.asked == 0
