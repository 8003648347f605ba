"""Sending a request its answer: a ranked result or an error, to its `reply_to` subject."""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker

from shared.messages import ErrorCode, ErrorResult, RankedResult, dedup_id
from shared.metrics import REQUESTS
from shared.subjects import Subjects

log = logging.getLogger(__name__)


class ReplySender:
    """Replies under the results subject go through JetStream with a `Nats-Msg-Id`, so a
    request processed twice (after a redelivery) is answered once; others go over core NATS."""

    def __init__(self, broker: NatsBroker, subjects: Subjects, worker: str) -> None:
        self._broker = broker
        self._subjects = subjects
        self._worker = worker

    async def send(self, reply_to: str, reply: RankedResult | ErrorResult) -> None:
        outcome = _outcome(reply)
        if reply_to.startswith(self._subjects.results_root + "."):
            await self._broker.publish(
                reply,
                subject=reply_to,
                stream=self._subjects.results_stream,
                headers={"Nats-Msg-Id": dedup_id(reply.request_id, "reply")},
            )
        else:
            await self._broker.publish(reply, subject=reply_to)
        REQUESTS.labels(worker=self._worker, outcome=outcome).inc()

    async def send_error(
        self, reply_to: str, request_id: str, code: ErrorCode, message: str
    ) -> None:
        log.warning("request %s failed: %s: %s", request_id, code.value, message)
        await self.send(reply_to, ErrorResult(request_id=request_id, code=code, message=message))


def _outcome(reply: RankedResult | ErrorResult) -> str:
    if isinstance(reply, ErrorResult):
        return reply.code.value
    return "degraded" if reply.degraded else "ok"
