"""A client under watch, for the fault and cluster tests: every request it sends (and whether
JetStream acknowledged its publish) and every answer on its results subject, counted twice
(as published, and as the results stream delivers it), so a test can print sent /
acknowledged / answered / duplicated / lost."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client as NatsConnection
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.retrieval.corpus import sample_queries
from rankstream.wire.connection import connect_kwargs
from rankstream.wire.contract import REPLY_ADAPTER, ErrorResult, QueryRequest, RankedResult
from rankstream.wire.handoff import dedup_id
from rankstream.wire.subjects import Subjects

TEXTS = [q.text for q in sample_queries()]
ANSWER_WAIT_S = 240.0
PUBLISH_ACK_WAIT_S = 2.0


@dataclass
class Ledger:
    """Answers on one client's results subject: every publish (`raw`, before the results
    stream drops a duplicate) and what the client is delivered (`seen`, through the stream)."""

    sent: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)  # their publish got a PubAck
    raw: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    seen_at: list[float] = field(default_factory=list)  # time.monotonic() of each delivery
    replies: dict[str, RankedResult | ErrorResult] = field(default_factory=dict)
    publisher: Publisher | None = None

    async def keep_sending(self, client: RankstreamClient, every_s: float, depth: int) -> None:
        """Publish one of `client`'s requests every `every_s` until cancelled, each once (no
        retry, so a publish into a dead or cut-off cluster is sent, not acknowledged); its
        answer goes to the client's results subject, which this ledger watches."""
        assert self.publisher is not None, "keep_sending() needs watched_client()'s ledger"
        while True:
            request = client.request(
                TEXTS[len(self.sent) % len(TEXTS)], top_k=depth, depth=depth,
                timeout_s=ANSWER_WAIT_S,
            )  # fmt: skip
            self.sent.add(request.request_id)
            if await self.publisher.publish(request.request_id, request.model_dump_json()):
                self.acknowledged.add(request.request_id)
            await asyncio.sleep(every_s)

    def answered_per_s(self, start: float, end: float) -> float:
        """Answers delivered per second between two monotonic times."""
        return sum(1 for t in self.seen_at if start <= t <= end) / max(end - start, 1e-9)

    def figures(self, name: str) -> dict[str, int]:
        """sent; acknowledged (JetStream took the publish); answered and duplicated (answers
        the client was delivered once, more than once); lost (acknowledged, never answered).
        A request whose publish got no PubAck may be answered or not: it is not lost."""
        answered = {r for r in self.sent if self.seen[r] > 0}
        figures = {
            "sent": len(self.sent),
            "acknowledged": len(self.acknowledged),
            "answered": len(answered),
            "duplicated": sum(1 for r in self.sent if self.seen[r] > 1),
            "lost": len(self.acknowledged - answered),
            "published_twice_deduplicated": sum(1 for r in self.sent if self.raw[r] > 1),
        }
        print(f"\n{name}: {figures}")
        return figures

    async def settle(self, timeout_s: float = 60.0) -> None:
        """Wait until the stream has delivered an answer to every acknowledged request
        (after a server restart or failover its consumer may replay them some seconds late),
        or `timeout_s`; then a second more, for a late duplicate to show."""
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            if all(self.seen[r] for r in self.acknowledged):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)


@asynccontextmanager
async def watched_client(settings: Settings) -> AsyncIterator[tuple[RankstreamClient, Ledger]]:
    """A client, and a second connection (to the same server list) counting its answers."""
    ledger = Ledger()
    async with RankstreamClient(settings) as client:
        connection = await nats.connect(**connect_kwargs(settings), max_reconnect_attempts=-1)
        ledger.publisher = Publisher(connection, Subjects.from_settings(settings).queries)

        async def on_raw(message: Msg) -> None:
            ledger.raw[REPLY_ADAPTER.validate_json(message.data).request_id] += 1

        async def on_seen(message: Msg) -> None:
            reply = REPLY_ADAPTER.validate_json(message.data)
            ledger.seen[reply.request_id] += 1
            ledger.seen_at.append(time.monotonic())
            ledger.replies[reply.request_id] = reply

        await connection.subscribe(client.reply_subject, cb=on_raw)
        await connection.jetstream().subscribe(
            client.reply_subject, cb=on_seen, ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )  # fmt: skip
        try:
            yield client, ledger
        finally:
            await connection.close()


@dataclass
class Publisher:
    """A request published as the client publishes it (queries subject, `Nats-Msg-Id`), but
    once, and saying whether JetStream acknowledged it."""

    connection: NatsConnection
    subject: str

    async def publish(self, request_id: str, payload: str) -> bool:
        try:
            await self.connection.jetstream().publish(
                self.subject, payload.encode(),
                headers={"Nats-Msg-Id": dedup_id(request_id, "query")},
                timeout=PUBLISH_ACK_WAIT_S,
            )  # fmt: skip
        except (TimeoutError, nats.errors.Error):
            return False
        return True


async def ask_many(
    client: RankstreamClient,
    ledger: Ledger,
    count: int,
    depth: int,
    timeout_s: float = ANSWER_WAIT_S,
) -> list[RankedResult | ErrorResult]:
    """Publish `count` requests at once, then wait for every answer. The default timeout is
    long enough that none is shed or cut short."""
    requests = [
        client.request(TEXTS[i % len(TEXTS)], top_k=depth, depth=depth, timeout_s=timeout_s)
        for i in range(count)
    ]
    ledger.sent.update(r.request_id for r in requests)

    async def send(request: QueryRequest) -> RankedResult | ErrorResult:
        reply = await client.send(request, wait_s=ANSWER_WAIT_S)
        ledger.acknowledged.add(request.request_id)  # send() returns once it was published
        return reply

    return await asyncio.gather(*(send(r) for r in requests))


async def until(condition: Callable[[], bool], timeout_s: float = 120, what: str = "") -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, f"not reached in {timeout_s:g} s: {what}"
        await asyncio.sleep(0.1)
