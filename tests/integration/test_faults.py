"""Faults on real nats-server processes and real worker processes: crash, NATS restart,
overload, graceful stop. Each test prints sent / answered / duplicated / lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from rankstream.config import Settings
from rankstream.wire.contract import ErrorResult, RankedResult
from rankstream.wire.subjects import Subjects
from rankstream.workers.local import EmbeddedNatsServer, WorkerProcess, free_port
from tests.integration.ledger import TEXTS, ask_many, until, watched_client

pytestmark = pytest.mark.integration


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    """A restartable server of this test's own: fixed port, file storage in tmp_path."""
    with EmbeddedNatsServer(port=free_port(), store_dir=tmp_path / "jetstream") as server:
        yield server


@pytest.fixture
def fault_settings(settings: Settings, nats_server: EmbeddedNatsServer) -> Settings:
    """A short ack wait, so a crashed worker's messages come back within seconds."""
    return settings.model_copy(
        update={"nats_url": nats_server.url, "ack_wait_s": 4.0, "metrics_port": 0}
    )


async def until_all_delivered_to_rerank(settings: Settings, count: int) -> None:
    """Until every request has reached the rerank worker: one still queued when it dies
    waits for the next replica (none comes in the test that uses this)."""
    subjects = Subjects.from_settings(settings)
    connection = await nats.connect(settings.effective_nats_url)
    try:
        js = connection.jetstream()
        give_up = time.monotonic() + 120
        while True:
            queries = await js.consumer_info(
                subjects.streams.queries, subjects.durable("retrieval")
            )
            pairs = await js.consumer_info(subjects.streams.candidates, subjects.durable("rerank"))
            forwarded = queries.delivered.stream_seq >= count and not queries.num_ack_pending
            if forwarded and not pairs.num_pending:
                return
            assert time.monotonic() < give_up, "requests did not reach the rerank worker"
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def test_kill_9_of_a_rerank_worker_mid_batch_loses_and_duplicates_nothing(
    fault_settings: Settings,
) -> None:
    with WorkerProcess("retrieval", fault_settings):
        first = WorkerProcess("rerank", fault_settings).start()
        async with watched_client(fault_settings) as (client, ledger):
            answers = asyncio.ensure_future(ask_many(client, ledger, 120, depth=3))
            await until(lambda: len(ledger.seen) >= 20)
            os.kill(first.pid, signal.SIGKILL)
            first.stop()
            answered_before_kill = len(ledger.seen)
            with WorkerProcess("rerank", fault_settings):
                replies = await answers
            await ledger.settle()
    figures = ledger.figures(f"kill -9 after {answered_before_kill} answers")
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert all(isinstance(r, RankedResult) for r in replies)


async def test_a_nats_restart_under_load_loses_and_duplicates_nothing(
    fault_settings: Settings, nats_server: EmbeddedNatsServer
) -> None:
    with WorkerProcess("retrieval", fault_settings), WorkerProcess("rerank", fault_settings):
        async with watched_client(fault_settings) as (client, ledger):
            answers = asyncio.ensure_future(ask_many(client, ledger, 60, depth=3))
            await until(lambda: len(ledger.seen) >= 10)
            nats_server.stop()
            await asyncio.sleep(2)
            nats_server.start()
            replies = await answers
            await ledger.settle()
    figures = ledger.figures("nats-server restart")
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert all(isinstance(r, RankedResult) for r in replies)


async def test_ten_times_capacity_stays_bounded_answers_late_requests_and_recovers(
    fault_settings: Settings,
) -> None:
    settings = fault_settings.model_copy(
        update={"max_inflight_requests": 16, "max_inflight_pairs": 64, "ack_wait_s": 30.0}
    )
    rerank_settings = settings.model_copy(update={"metrics_port": free_port()})
    with WorkerProcess("retrieval", settings), WorkerProcess("rerank", rerank_settings) as rerank:
        async with watched_client(settings) as (client, ledger):
            started = time.perf_counter()
            warm = await ask_many(client, ledger, 8, depth=5)
            capacity_qps = 8 / (time.perf_counter() - started)
            burst = int(10 * capacity_qps * 10)  # ten seconds of ten times capacity
            replies = await ask_many(client, ledger, burst, depth=5, timeout_s=5)
            peak_rss_mb = rerank.peak_rss_mb()
            recovered = await client.query(TEXTS[0], depth=5, timeout_s=30)
    figures = ledger.figures(f"overload: {burst} queries at once, ~{capacity_qps:.1f} q/s capacity")
    outcomes = Counter(
        "degraded" if isinstance(r, RankedResult) and r.degraded
        else "ok" if isinstance(r, RankedResult) else r.code.value
        for r in replies
    )  # fmt: skip
    print(f"outcomes {dict(outcomes)}, rerank worker peak RSS {peak_rss_mb:.0f} MB")
    assert len(warm) == 8
    assert figures["lost"] == 0
    cut_short = outcomes["degraded"] + outcomes["expired"] + outcomes["overloaded"]
    assert cut_short > 0, "no late request was cut short"
    assert peak_rss_mb < 1536
    assert not recovered.degraded
    assert recovered.timings_ms.total < 5_000


async def test_sigterm_finishes_and_acknowledges_what_the_worker_holds_then_exits(
    fault_settings: Settings,
) -> None:
    settings = fault_settings.model_copy(update={"shutdown_grace_s": 20.0, "ack_wait_s": 60.0})
    subjects = Subjects.from_settings(settings)
    with WorkerProcess("retrieval", settings):
        worker = WorkerProcess("rerank", settings).start()
        async with watched_client(settings) as (client, ledger):
            answers = asyncio.ensure_future(ask_many(client, ledger, 40, depth=5))
            await until(lambda: len(ledger.seen) >= 3)
            stop_started = time.monotonic()
            exit_code = worker.stop(timeout_s=40)
            stop_seconds = time.monotonic() - stop_started
            answered_by_first = len(ledger.seen)
            with WorkerProcess("rerank", settings):
                replies = await answers
            connection = await nats.connect(settings.effective_nats_url)
            info = await connection.jetstream().consumer_info(
                subjects.streams.candidates, subjects.durable("rerank")
            )
            await connection.close()
    figures = ledger.figures(
        f"SIGTERM after {answered_by_first} answers, exit in {stop_seconds:.1f} s"
    )
    assert exit_code == 0
    assert stop_seconds < settings.shutdown_grace_s + 10
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert len(replies) == 40
    # Nothing the first worker held was left for a redelivery after its ack wait.
    assert info.num_redelivered == 0, info


async def test_sigterm_hands_back_at_once_what_the_worker_fetched_but_had_not_started(
    fault_settings: Settings,
) -> None:
    """Two rerank replicas under a backlog, each holding (fetched, buffered) more than it
    runs; one is stopped. What it had fetched but not started is naked on the spot, so the
    other replica answers it within seconds, not after the ack wait (two minutes here)."""
    settings = fault_settings.model_copy(
        update={"ack_wait_s": 120.0, "shutdown_grace_s": 20.0, "max_inflight_requests": 2}
    )
    with WorkerProcess("retrieval", settings), WorkerProcess("rerank", settings):
        stopped = WorkerProcess("rerank", settings).start()
        async with watched_client(settings) as (client, ledger):
            answers = asyncio.ensure_future(ask_many(client, ledger, 60, depth=5))
            await until(lambda: len(ledger.seen) >= 5)
            exit_code = stopped.stop(timeout_s=40)
            stopped_at = time.monotonic()
            replies = await answers
            last_answer_after_stop_s = max(ledger.seen_at) - stopped_at
            await ledger.settle()
    figures = ledger.figures(f"SIGTERM; last answer {last_answer_after_stop_s:.1f} s after exit")
    assert exit_code == 0
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert all(isinstance(r, RankedResult) for r in replies)
    assert last_answer_after_stop_s < 30, "held messages came back only after the ack wait"


async def test_messages_whose_worker_dies_on_their_last_delivery_become_dead_letters(
    fault_settings: Settings,
) -> None:
    """max_deliver=1 and a rerank worker killed while holding work: JetStream gives up on
    those messages, and the advisory makes another process dead-letter and answer them."""
    settings = fault_settings.model_copy(update={"max_deliver": 1, "ack_wait_s": 2.0})
    subjects = Subjects.from_settings(settings)
    with WorkerProcess("retrieval", settings):  # also watches the advisories
        worker = WorkerProcess("rerank", settings).start()
        async with watched_client(settings) as (client, ledger):
            answers = asyncio.ensure_future(ask_many(client, ledger, 30, depth=5))
            await until(lambda: len(ledger.seen) >= 2)
            await until_all_delivered_to_rerank(settings, 30)
            os.kill(worker.pid, signal.SIGKILL)
            worker.stop()
            replies = await answers
            connection = await nats.connect(settings.effective_nats_url)
            letters = await connection.jetstream().stream_info(subjects.streams.dead_letters)
            await connection.close()
    figures = ledger.figures("killed on the last delivery")
    gave_up = [r for r in replies if isinstance(r, ErrorResult)]
    print(f"{len(gave_up)} answered with an error, {letters.state.messages} dead letters")
    assert figures["lost"] == 0
    assert gave_up, "the kill came too late: nothing was held"
    assert all(r.code.value == "internal" for r in gave_up)
    # A request answered but killed before its ack is dead-lettered too; its error answer is
    # then the duplicate the results stream drops, so the requester keeps the first answer.
    answered_then_killed = figures["published_twice_deduplicated"]
    assert len(gave_up) <= letters.state.messages <= len(gave_up) + answered_then_killed
