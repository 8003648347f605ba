"""Sending a request its answer (a ranked result or an error, to its `reply_to` subject) and
keeping a dead letter; each counted under the worker that sent it."""

from __future__ import annotations

import asyncio
import logging
import time

import nats
from faststream.nats import NatsBroker
from nats.js.errors import APIError, BadRequestError

from rankstream.errors import ErrorCode
from rankstream.metrics import Metrics
from rankstream.planning.plan import QueryPlan
from rankstream.wire.contract import ErrorResult, RankedResult, WireModel
from rankstream.wire.handoff import dedup_id
from rankstream.wire.subjects import Subjects

log = logging.getLogger(__name__)

# How long a worker keeps publishing an answer JetStream does not confirm: a stream leader
# election on a NATS cluster takes ~5-9 s.
RESULT_PATIENCE_S = 10.0
# JetStream's error code for a publish a full stream refuses (discard new):
# "maximum bytes exceeded", with status 503.
STREAM_FULL = 10077


class ReplySender:
    """Replies under the results subject go through JetStream with a `Nats-Msg-Id`, so a
    request processed twice (after a redelivery) is answered once; others go over core NATS.

    Args:
        worker: the worker that answers (`retrieval`, `rerank`): the `worker` label of
            `rankstream_requests_total`.
    """

    def __init__(
        self, broker: NatsBroker, subjects: Subjects, worker: str, metrics: Metrics
    ) -> None:
        self._broker = broker
        self.subjects = subjects
        self.worker = worker
        self._metrics = metrics

    async def send(self, reply_to: str, reply: RankedResult | ErrorResult) -> None:
        if self.subjects.is_results_subject(reply_to):
            await self._publish_result(reply_to, reply)
        else:
            await self._broker.publish(reply, subject=reply_to)
        self._metrics.requests.labels(worker=self.worker, outcome=_outcome(reply)).inc()

    async def answer(self, plan: QueryPlan, result: RankedResult) -> None:
        """Send the request `plan` was made from its result as it asked for it
        (`RankedResult.as_asked`)."""
        await self.send(plan.reply_to, result.as_asked(plan.return_documents))

    async def _publish_result(self, reply_to: str, reply: RankedResult | ErrorResult) -> None:
        """Publish through the results stream, asking again for up to RESULT_PATIENCE_S while
        JetStream does not confirm (on a NATS cluster: the stream's leader died and a new one
        is being elected). The `Nats-Msg-Id` makes a repeated publish land once; giving up
        on the first error would send the whole request back to be scored again."""
        give_up, delay = time.monotonic() + RESULT_PATIENCE_S, 0.25
        while True:
            try:
                await self._broker.publish(
                    reply,
                    subject=reply_to,
                    stream=self.subjects.streams.results,
                    headers={"Nats-Msg-Id": dedup_id(reply.request_id, "reply")},
                )
                return
            except (BadRequestError, nats.errors.MaxPayloadError):
                raise  # as large, or as bad, on every try
            except (TimeoutError, nats.errors.Error) as error:
                if time.monotonic() + delay > give_up:
                    raise
                log.info("%s: result not confirmed (%r); publishing again", self.worker, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

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
