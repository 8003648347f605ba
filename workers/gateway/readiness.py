"""Is the gateway worth sending traffic to? Liveness and readiness, as Kubernetes splits them.

- `/livez`: 200 while the process serves HTTP (its event loop answers). Restart it when not.
- `/readyz`: 200 only when the gateway is connected to NATS, the work-queue streams exist,
  and a worker of each kind (`gateway_ready_workers`: retrieval, rerank) consumes them; 503
  otherwise, with the reason. `/health` answers as `/readyz`, so a load balancer that probes
  `/health` stops sending requests that could only fail.

"Consumes" is read from JetStream's view of each worker's durable pull consumer
(`{prefix}-retrieval` on QUERIES; `{prefix}-rerank` on CANDIDATES and
`{prefix}-rerank-direct` on RERANK): a running worker keeps a pull request waiting
(`num_waiting` > 0) while it has room for work, and a busy one holds messages it received
recently (`num_ack_pending` > 0, delivered within `ack_wait_s`). A stopped worker's pull
requests expire within `fetch_wait_ms`. A consumer seen without either is asked once more
after a moment (a worker re-asks between two pulls).

One check is reused for `gateway_ready_cache_s` (1 s), and probes that arrive while one
runs wait for it: a storm of probes asks NATS at most once per period.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError
from pydantic import BaseModel, Field

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.wire.connection import loggable_url
from rankstream.wire.subjects import Subjects

# How long one consumer-info request may take before the check calls NATS unresponsive.
INFO_TIMEOUT_S = 1.0
# A consumer seen idle is asked again after this long (a worker's next pull).
RECHECK_AFTER_S = 0.2
STREAM_NOT_FOUND = 10059


class ReadinessBody(BaseModel):
    """What `/readyz` (and `/health`) answer."""

    status: str = Field(description="`ok` or `unavailable`.")
    reason: str = Field(description="`ready`, or what is missing.")
    checks: dict[str, bool] = Field(
        description="nats_connected, streams, and <worker>_workers for each worker kind "
        "required (RANKSTREAM_GATEWAY_READY_WORKERS)."
    )
    consumers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per `stream/consumer`: num_waiting, num_ack_pending, num_pending, "
        "seconds since its last delivery.",
    )


class LivenessBody(BaseModel):
    status: str = Field(description="`ok`: the process serves HTTP.")


@dataclass(frozen=True)
class Readiness:
    ok: bool
    reason: str
    checks: dict[str, bool]
    consumers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def body(self) -> ReadinessBody:
        return ReadinessBody(
            status="ok" if self.ok else "unavailable",
            reason=self.reason,
            checks=self.checks,
            consumers=self.consumers,
        )


@dataclass(frozen=True)
class Watched:
    """A consumer readiness depends on."""

    worker: str  # retrieval, rerank
    stream: str
    consumer: str

    @property
    def name(self) -> str:
        return f"{self.stream}/{self.consumer}"


def watched_consumers(settings: Settings) -> list[Watched]:
    """The durable consumers of the workers `gateway_ready_workers` names."""
    subjects = Subjects.from_settings(settings)
    every = [
        Watched("retrieval", subjects.streams.queries, subjects.durable("retrieval")),
        Watched("rerank", subjects.streams.candidates, subjects.durable("rerank")),
        Watched("rerank", subjects.streams.rerank, subjects.durable("rerank-direct")),
    ]
    return [w for w in every if w.worker in settings.gateway_ready_workers]


class ReadinessProbe:
    """Checks readiness through `client`'s connection, at most once per `cache_s`."""

    def __init__(
        self,
        settings: Settings,
        client: RankstreamClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings, self._client, self._clock = settings, client, clock
        self._watched = watched_consumers(settings)
        self._lock = asyncio.Lock()
        self._last: Readiness | None = None
        self._last_at = 0.0

    async def check(self) -> Readiness:
        """The readiness, checked now unless checked within `gateway_ready_cache_s`."""
        async with self._lock:
            fresh = self._clock() - self._last_at < self._settings.gateway_ready_cache_s
            if self._last is None or not fresh:
                self._last = await self._check()
                self._last_at = self._clock()
            return self._last

    async def _check(self) -> Readiness:
        settings = self._settings
        checks = {"nats_connected": self._client.connected}
        if not checks["nats_connected"]:
            return Readiness(
                False,
                f"not connected to NATS at {loggable_url(settings.effective_nats_url)}",
                checks,
            )
        infos: dict[str, ConsumerInfo] = {}
        problems: list[str] = []
        streams_ok = True
        answers = await asyncio.gather(
            *(self._info(watched) for watched in self._watched), return_exceptions=True
        )
        for watched, answer in zip(self._watched, answers, strict=True):
            try:
                if isinstance(answer, BaseException):
                    raise answer
                infos[watched.name] = answer
            except NotFoundError as error:
                if error.err_code == STREAM_NOT_FOUND:
                    streams_ok = False
                    problems.append(
                        f"stream {watched.stream} does not exist: start the {watched.worker} "
                        "workers (they create it)"
                    )
                else:
                    problems.append(
                        f"no {watched.worker} worker has consumed {watched.stream} yet "
                        f"(no consumer {watched.consumer}): start one"
                    )
            except TimeoutError:
                streams_ok = False
                problems.append(
                    f"NATS did not answer for consumer {watched.name} within "
                    f"{INFO_TIMEOUT_S:g} s (may the gateway's NATS user read "
                    f"$JS.API.CONSUMER.INFO.{watched.stream}.{watched.consumer}?)"
                )
            except Exception as error:  # nats-py raises several unrelated types here
                streams_ok = False
                problems.append(f"consumer {watched.name}: {type(error).__name__}: {error}")
        checks["streams"] = streams_ok
        for watched in self._watched:
            info = infos.get(watched.name)
            serving = info is not None and self._serving(info)
            if info is not None and not serving:
                info = await self._recheck(watched)
                serving = info is not None and self._serving(info)
                if info is not None:
                    infos[watched.name] = info
            if info is not None and not serving:
                problems.append(
                    f"no {watched.worker} worker is consuming {watched.stream} (consumer "
                    f"{watched.consumer} has no pull waiting): start one, or see its log"
                )
            key = f"{watched.worker}_workers"
            checks[key] = checks.get(key, True) and serving
        consumers = {name: self._summary(info) for name, info in infos.items()}
        if problems:
            return Readiness(False, "; ".join(problems), checks, consumers)
        return Readiness(True, "ready", checks, consumers)

    async def _info(self, watched: Watched) -> ConsumerInfo:
        return await self._client.consumer_info(watched.stream, watched.consumer, INFO_TIMEOUT_S)

    async def _recheck(self, watched: Watched) -> ConsumerInfo | None:
        await asyncio.sleep(RECHECK_AFTER_S)
        try:
            return await self._info(watched)
        except Exception:  # reported as not consuming
            return None

    def _serving(self, info: ConsumerInfo) -> bool:
        """A worker waits for work on it, or holds work it received recently."""
        if (info.num_waiting or 0) > 0:
            return True
        since = _seconds_since_delivery(info)
        recent = since is not None and since <= self._settings.ack_wait_s
        return (info.num_ack_pending or 0) > 0 and recent

    @staticmethod
    def _summary(info: ConsumerInfo) -> dict[str, Any]:
        since = _seconds_since_delivery(info)
        return {
            "num_waiting": info.num_waiting or 0,
            "num_ack_pending": info.num_ack_pending or 0,
            "num_pending": info.num_pending or 0,
            "last_delivery_s": None if since is None else round(since, 1),
        }


def _seconds_since_delivery(info: ConsumerInfo) -> float | None:
    last = info.delivered.last_active if info.delivered is not None else None
    if last is None:
        return None
    now = datetime.datetime.now(datetime.UTC)
    return max(0.0, (now - last).total_seconds())
