"""The load `rankstream bench-peers` puts on every system, and how it compares rankings."""

from __future__ import annotations

import asyncio

import pytest

from rankstream.workers.tools.peers.load import closed_loop, open_loop, scores_of
from rankstream.workers.tools.peers.report import agreement
from rankstream.workers.tools.peers.workload import PeerRequest

REQUESTS = [PeerRequest(f"q{i}", ("a", "b", "c")) for i in range(4)]


async def shared_time(request: PeerRequest) -> list[float]:
    """A system that shares its time among requests: each answer takes 0.4 s."""
    await asyncio.sleep(0.4)
    return [3.0, 2.0, 1.0]


async def test_a_closed_loop_waits_until_each_client_was_answered_once() -> None:
    phase = await closed_loop(shared_time, REQUESTS, clients=8, duration_s=0.05)
    assert len(phase.latencies_ms) >= 8
    assert phase.window_s >= 0.4
    assert phase.pairs == 3 * len(phase.latencies_ms)
    assert phase.answered_pairs >= phase.pairs


async def test_a_closed_loop_counts_only_answers_inside_its_window() -> None:
    phase = await closed_loop(shared_time, REQUESTS, clients=2, duration_s=1.0)
    # Two clients, 0.4 s per answer: rounds end at 0.4 and 0.8 s, inside the second; the
    # third, at 1.2 s, after it.
    assert len(phase.latencies_ms) == 4
    assert phase.answered_pairs == 3 * 6
    assert phase.summary()["requests_per_s"] == pytest.approx(4 / phase.window_s)


async def test_a_failing_system_is_counted_not_raised() -> None:
    async def broken(request: PeerRequest) -> list[float]:
        raise RuntimeError("HTTP 500")

    phase = await closed_loop(broken, REQUESTS, clients=2, duration_s=0.1)
    assert phase.errors >= 2
    assert phase.first_error == "RuntimeError: HTTP 500"
    assert phase.latencies_ms == []


async def test_an_open_loop_counts_every_answer() -> None:
    phase = await open_loop(shared_time, REQUESTS, rate=20.0, duration_s=0.3)
    assert len(phase.latencies_ms) == phase.answered_pairs // 3 > 0
    assert min(phase.latencies_ms) >= 400


async def test_scores_are_kept_per_request_in_order() -> None:
    assert await scores_of(shared_time, REQUESTS[:2]) == [[3.0, 2.0, 1.0]] * 2


def test_agreement_compares_each_list_with_the_reference_prefix() -> None:
    reference = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    same_order = agreement([[0.9, 0.8, 0.7]], reference)  # a shallower list: a prefix
    assert same_order["spearman_min"] == pytest.approx(1.0)
    reversed_order = agreement([[1.0, 2.0, 3.0]], reference)
    assert reversed_order["spearman_min"] == pytest.approx(-1.0)
    assert reversed_order["top10_overlap_min"] == 1.0  # the same three, in another order
