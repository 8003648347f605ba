"""Load against any reranker behind one async call: closed loops of N clients, an open loop of
Poisson arrivals, and one pass that keeps the scores (for the agreement check). The same code
drives a server over HTTP or NATS and a model in process, so the figures compare."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rankstream.workers.tools.peers.workload import PeerRequest
from rankstream.workers.tools.stats import percentiles

Score = Callable[[PeerRequest], Awaitable[list[float]]]
"""Scores for a request's documents, in the order given (higher = more relevant)."""


@dataclass
class Phase:
    """What one load phase measured: latencies and pairs of the requests it counted."""

    label: str
    clients: int | None = None
    rate: float | None = None
    window_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    pairs: int = 0
    answered_pairs: int = 0  # counted or not: what the CPU seconds paid for
    errors: int = 0
    first_error: str | None = None

    def record(self, started: float, pairs: int) -> None:
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.pairs += pairs

    def failed(self, error: Exception) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(error).__name__}: {error}"

    def summary(self) -> dict[str, Any]:
        window = self.window_s or 1e-9
        return {
            "label": self.label,
            "clients": self.clients,
            "rate": self.rate,
            "seconds": round(self.window_s, 2),
            "requests": len(self.latencies_ms),
            "requests_per_s": len(self.latencies_ms) / window,
            "pairs_per_s": self.pairs / window,
            "latency_ms": percentiles(self.latencies_ms) if self.latencies_ms else None,
            "errors": self.errors,
            "first_error": self.first_error,
        }


async def closed_loop(
    score: Score, requests: Sequence[PeerRequest], clients: int, duration_s: float
) -> Phase:
    """`clients` loops, each sending its next request as soon as the last was answered.

    The measured window lasts `duration_s`, or longer until `clients` requests have been
    answered (a system that shares its time among all requests answers none early); only
    answers inside the window count. Requests still open when it closes are awaited, not
    counted."""
    phase = Phase(f"closed, {clients} clients", clients=clients)
    started = time.perf_counter()
    deadline = started + duration_s
    closed = asyncio.Event()

    def close_when_due() -> None:
        if time.perf_counter() >= deadline and len(phase.latencies_ms) >= clients:
            phase.window_s = time.perf_counter() - started
            closed.set()

    async def one_client(position: int) -> None:
        while not closed.is_set():
            request = requests[position % len(requests)]
            position += clients
            sent = time.perf_counter()
            try:
                await score(request)
            except Exception as error:
                phase.failed(error)
                if phase.errors >= clients:
                    closed.set()
                continue
            phase.answered_pairs += len(request.documents)
            if not closed.is_set():
                phase.record(sent, len(request.documents))
                close_when_due()

    async def timer() -> None:
        while not closed.is_set():
            await asyncio.sleep(0.05)
            close_when_due()

    await asyncio.gather(timer(), *(one_client(i) for i in range(clients)))
    phase.window_s = phase.window_s or time.perf_counter() - started
    return phase


async def open_loop(
    score: Score, requests: Sequence[PeerRequest], rate: float, duration_s: float
) -> Phase:
    """Poisson arrivals at `rate` requests/s for `duration_s`, whatever the answers do; every
    answer counts, over the time until the last one."""
    phase = Phase(f"open, {rate:.2f}/s", rate=rate)
    arrivals = random.Random(0)
    started = time.perf_counter()

    async def one(request: PeerRequest) -> None:
        sent = time.perf_counter()
        try:
            await score(request)
        except Exception as error:
            phase.failed(error)
            return
        phase.answered_pairs += len(request.documents)
        phase.record(sent, len(request.documents))

    pending = []
    position = 0
    next_at = started
    while next_at < started + duration_s:
        pending.append(asyncio.create_task(one(requests[position % len(requests)])))
        position += 1
        next_at += arrivals.expovariate(rate)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await asyncio.gather(*pending)
    phase.window_s = time.perf_counter() - started
    return phase


async def scores_of(score: Score, requests: Sequence[PeerRequest]) -> list[list[float]]:
    """Each request's scores, one request at a time (nothing else in a batch with it)."""
    return [await score(request) for request in requests]
