"""Sending a request its answer (a ranked result or an error, to its `reply_to` subject):
cached first, published until JetStream confirms it, then recorded as answered; and keeping
a dead letter. Each answer is counted under the worker that sent it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import nats
from faststream.nats import NatsBroker
from nats.js.errors import APIError, BadRequestError, KeyNotFoundError
from nats.js.kv import KeyValue

from rankstream.cache.store import ResultCache
from rankstream.errors import ErrorCode
from rankstream.metrics import Metrics
from rankstream.planning.plan import QueryPlan
from rankstream.wire.contract import ErrorResult, RankedResult, WireModel
from rankstream.wire.handoff import dedup_id
from rankstream.wire.subjects import Subjects

log = logging.getLogger(__name__)

# How long a worker keeps publishing what JetStream does not confirm (an answer, a candidate
# set): a stream leader election on a NATS cluster takes ~5-9 s.
PUBLISH_PATIENCE_S = 10.0


async def publish_until_confirmed(
    publish: Callable[[], Awaitable[object]], what: str, patience_s: float = PUBLISH_PATIENCE_S
) -> None:
    """Call `publish` (a JetStream publish carrying a `Nats-Msg-Id`, so a repeat lands once)
    until JetStream confirms it, asking again for up to `patience_s` (on a NATS cluster: the
    stream's leader died and a new one is being elected). Giving up on the first error would
    send the whole request back to be worked on again.

    Raises:
        BadRequestError, nats.errors.MaxPayloadError: at once: as bad, or as large, on every
            try (the request cannot be served as it is).
        TimeoutError, nats.errors.Error: still unconfirmed after `patience_s`.
    """
    give_up, delay = time.monotonic() + patience_s, 0.25
    while True:
        try:
            await publish()
            return
        except (BadRequestError, nats.errors.MaxPayloadError):
            raise
        except (TimeoutError, nats.errors.Error) as error:
            if time.monotonic() + delay > give_up:
                raise
            log.info("%s not confirmed (%r); publishing again", what, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class AnsweredRequests:
    """The record of requests answered lately (the `{PREFIX}_ANSWERED` bucket), on the
    broker's connection: written after each answer is published, read when JetStream
    delivers a request again, so one already answered is not worked on twice. Neither
    failure fails a request: a record not written, or not read, costs only the repeated work
    the results stream's deduplication then drops."""

    def __init__(self, broker: NatsBroker, subjects: Subjects) -> None:
        self._broker = broker
        self._bucket = subjects.answered_bucket

    async def record(self, request_id: str, worker: str) -> None:
        try:
            await (await self._kv()).put(_key(request_id), worker.encode())
        except Exception as error:  # the answer is out: nothing may send it back to be redone
            log.warning("could not record request %s as answered: %r", request_id, error)

    async def contains(self, request_id: str) -> bool:
        try:
            await (await self._kv()).get(_key(request_id))
        except KeyNotFoundError:
            return False
        except Exception as error:  # unknown: do the work (a second answer is deduplicated)
            log.warning("could not read whether %s was answered: %r", request_id, error)
            return False
        return True

    async def _kv(self) -> KeyValue:
        # Looked up once per broker (FastStream keeps it), created by `ensure_streams`.
        return await self._broker.key_value(self._bucket, declare=False)


def _key(request_id: str) -> str:
    # A key-value key allows [-/_=.a-zA-Z0-9]; the dedup id is a digest and a stage name.
    return dedup_id(request_id, "answered").replace(":", ".")


# How long one publish waits for JetStream's confirmation (PubAck) before it is published
# again. FastStream's 0.5 s was shorter than a PubAck takes on a loaded machine: the answer was
# published again, landed once in the stream (Nats-Msg-Id) but reached core subscribers twice.
PUBACK_TIMEOUT_S = 3.0

# JetStream's error code for a publish a full stream refuses (discard new):
# "maximum bytes exceeded", with status 503.
STREAM_FULL = 10077


class ReplySender:
    """Replies under the results subject go through JetStream with a `Nats-Msg-Id`, so a
    request processed twice (after a redelivery) is answered once; others go over core NATS.

    Args:
        worker: the worker that answers (`retrieval`, `rerank`): the `worker` label of
            `rankstream_requests_total`.
        cache: where `answer` stores a result before sending it (None: nowhere).
    """

    def __init__(
        self,
        broker: NatsBroker,
        subjects: Subjects,
        worker: str,
        metrics: Metrics,
        cache: ResultCache | None = None,
    ) -> None:
        self._broker = broker
        self.subjects = subjects
        self.worker = worker
        self._metrics = metrics
        self._cache = cache
        self.answered = AnsweredRequests(broker, subjects)

    async def send(self, reply_to: str, reply: RankedResult | ErrorResult) -> None:
        """Send `reply`, then record its request as answered."""
        if self.subjects.is_results_subject(reply_to):
            await publish_until_confirmed(
                lambda: self._broker.publish(
                    reply,
                    subject=reply_to,
                    stream=self.subjects.streams.results,
                    headers={"Nats-Msg-Id": dedup_id(reply.request_id, "reply")},
                    timeout=PUBACK_TIMEOUT_S,
                ),
                f"{self.worker}: the answer to {reply.request_id}",
            )
        else:
            await self._broker.publish(reply, subject=reply_to)
        self._metrics.requests.labels(worker=self.worker, outcome=_outcome(reply)).inc()
        await self.answered.record(reply.request_id, self.worker)

    async def answer(
        self, plan: QueryPlan, result: RankedResult, query_vector: list[float] | None = None
    ) -> None:
        """Store `result` in the cache (unless it came from there), then send the request
        `plan` was made from its result as it asked for it (`RankedResult.as_asked`): a repeat
        sent the moment the answer arrives finds it cached.

        Args:
            query_vector: the query's embedding, kept for the semantic tier.
        """
        if plan.cache is not None and self._cache is not None and not result.cached:
            await self._cache.remember(plan.cache, result, query_vector)
        await self.send(plan.reply_to, result.as_asked(plan.return_documents))

    async def send_error(
        self, reply_to: str, request_id: str, code: ErrorCode, message: str
    ) -> None:
        log.warning("%s: request %s failed: %s: %s", self.worker, request_id, code.value, message)
        error = ErrorResult(request_id=request_id, code=code, message=message, worker=self.worker)
        await self.send(reply_to, error)

    async def dead_letter(self, letter: WireModel) -> None:
        """Keep `letter`; when the dead-letter stream is full (dead_letters_max_bytes, discard
        new), log and count it instead: the message is still given up on, never redelivered."""
        try:
            await self._broker.publish(
                letter, self.subjects.dead_letters, stream=self.subjects.streams.dead_letters
            )
        except APIError as error:
            if error.err_code != STREAM_FULL:
                raise
            self._metrics.dead_letters_dropped.labels(worker=self.worker).inc()
            log.error(
                "%s: dead-letter stream %s is full (%s); this dead letter is dropped: raise "
                "RANKSTREAM_DEAD_LETTERS_MAX_BYTES or purge the stream",
                self.worker, self.subjects.streams.dead_letters, error.description,
            )  # fmt: skip


def _outcome(reply: RankedResult | ErrorResult) -> str:
    if isinstance(reply, ErrorResult):
        return reply.code.value
    return "degraded" if reply.degraded else "ok"
