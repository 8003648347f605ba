"""Where errors become acknowledgements: one FastStream middleware for both workers.

| what happened                                  | the requester gets | the message     |
|------------------------------------------------|--------------------|-----------------|
| handled normally                               | its answer         | ack             |
| undecodable, invalid, or a model error         | error result       | dead letter, term |
| an output over the server's max_payload        | `invalid_request`  | dead letter, term |
| other RankstreamError (expired, store missing) | error result       | ack             |
| anything else, deliveries left                 | nothing yet        | nak with backoff |
| anything else, last delivery                   | `internal` error   | dead letter, term |
| delivered again, its answer already published  | nothing more       | ack, no work    |
| fetched but not started when the worker stops  | (another replica)  | nak at once     |
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import nats.errors
from faststream import AckPolicy, BaseMiddleware, ContextRepo, StreamMessage
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.message import NatsMessage
from faststream.nats.subscriber.usecases.stream_pull_subscriber import (
    ConcurrentPullStreamSubscriber,
)
from faststream.types import AsyncFuncAny
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as ConsumerAckPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rankstream.config import Settings
from rankstream.errors import ErrorCode, InvalidRequestError, ModelError, RankstreamError
from rankstream.metrics import Metrics
from rankstream.wire.contract import SUBJECT_PATTERN, WireModel, now_ms
from rankstream.wire.streams import work_queue_streams
from rankstream.wire.subjects import Subjects
from rankstream.workers.replies import ReplySender

log = logging.getLogger(__name__)

# FastStream decodes a body by its content-type header before validating it: a body that
# does not decode as that type is as invalid as one that fails validation.
NEVER_SUCCEEDS = (
    ValidationError,
    InvalidRequestError,
    ModelError,
    json.JSONDecodeError,
    UnicodeDecodeError,
    # What the worker publishes for it (candidates, answer) is over the server's max_payload:
    # as large again on every delivery.
    nats.errors.MaxPayloadError,
)
# A dead letter must itself fit in a NATS message (1 MiB by default), base64 included.
MAX_KEPT_PAYLOAD = 512 * 1024
PREVIEW_BYTES = 2048
SUBJECT = re.compile(SUBJECT_PATTERN)
# Pull consumers only receive what a replica asks for, so each replica bounds its own
# in-flight messages; this server-side cap is shared by all replicas and must not be what
# limits a scaled-out deployment (it stops delivery silently when reached).
MAX_ACK_PENDING = 20_000


class DeadLetter(WireModel):
    """A message that will never be answered normally, kept with why and what it was."""

    worker: str
    subject: str
    code: ErrorCode
    reason: str
    deliveries: int = Field(ge=0)
    request_id: str | None = None
    payload_preview: str = Field(description="The start of the payload, as UTF-8 text.")
    payload_base64: str = Field(description="The original bytes, exactly (unless truncated).")
    payload_bytes: int = Field(ge=0)
    payload_sha256: str
    truncated: bool = Field(description="True when the payload was too large to keep whole.")
    failed_at_ms: float = Field(default_factory=now_ms)


def work_queue_subscription(
    settings: Settings, subject: str, stream: str, durable: str
) -> dict[str, Any]:
    """A durable pull consumer shared by every replica of one worker.

    Up to `max_inflight_requests` messages are held at once; FastStream acknowledges each
    only after its handler returned, i.e. after the output was published.
    """
    inflight = settings.max_inflight_requests
    return {
        "subject": subject,
        "stream": JStream(stream, declare=False),
        "durable": durable,
        "pull_sub": PullSub(batch_size=min(inflight, 16), timeout=settings.fetch_wait_ms / 1000),
        "max_workers": inflight,
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "config": ConsumerConfig(
            ack_policy=ConsumerAckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            max_ack_pending=MAX_ACK_PENDING,
        ),
    }


class DeliveryGuard(BaseMiddleware):
    """Built per message by FastStream; `broker` and `settings` are bound with `partial`."""

    def __init__(
        self,
        msg: Any,
        /,
        *,
        context: ContextRepo,
        broker: NatsBroker,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        super().__init__(msg, context=context)
        self._broker = broker
        self._settings = settings
        self._subjects = Subjects.from_settings(settings)
        self._metrics = metrics

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        assert isinstance(msg, NatsMessage), "DeliveryGuard serves NATS subscribers only"
        body: bytes = msg.body
        try:
            if len(body) > self._settings.max_message_bytes:
                raise InvalidRequestError(
                    f"message of {len(body)} bytes exceeds max_message_bytes "
                    f"{self._settings.max_message_bytes}"
                )
            if await self._answered_before(msg):
                return None
            return await call_next(msg)
        except NEVER_SUCCEEDS as error:
            await self._give_up(msg, _code(error), _describe(error))
        except RankstreamError as error:
            await self._answer_error(msg, error.code, str(error))
            await msg.ack()
        except Exception as error:
            await self._retry_or_give_up(msg, error)
        return None

    async def _answered_before(self, msg: NatsMessage) -> bool:
        """A request delivered again whose answer was published already (its worker stopped,
        or its ack was lost, after answering) is acknowledged without being worked on again;
        a first delivery is not looked up."""
        address = reply_address(msg.body, self._subjects) if _deliveries(msg) > 1 else None
        if address is None:
            return False
        replies = self._replies(msg)
        if not await replies.answered.contains(address[0]):
            return False
        log.info("request %s was answered already; acknowledging its redelivery", address[0])
        self._metrics.redeliveries_answered.labels(worker=replies.worker).inc()
        await msg.ack()
        return True

    async def _retry_or_give_up(self, msg: NatsMessage, error: Exception) -> None:
        deliveries = _deliveries(msg)
        if deliveries < self._settings.max_deliver:
            backoff = self._settings.retry_backoff_s
            delay = backoff[min(deliveries, len(backoff)) - 1]
            log.warning("delivery %d failed (%r); retrying in %.1f s", deliveries, error, delay)
            await msg.nack(delay=delay)
            return
        log.exception("giving up after %d deliveries", deliveries, exc_info=error)
        await self._give_up(msg, ErrorCode.INTERNAL, f"failed {deliveries} times: {error!r}")

    async def _give_up(self, msg: NatsMessage, code: ErrorCode, reason: str) -> None:
        """Dead-letter the original bytes, tell the requester, and never deliver it again."""
        failed = FailedMessage(
            body=msg.body,
            worker=self._worker_of(msg),
            subject=_subject(msg),
            deliveries=_deliveries(msg),
        )
        await give_up(self._replies(msg), failed, code, reason)
        await msg.reject()

    async def _answer_error(self, msg: NatsMessage, code: ErrorCode, message: str) -> None:
        await answer_error(self._replies(msg), msg.body, code, message)

    def _replies(self, msg: NatsMessage) -> ReplySender:
        return ReplySender(self._broker, self._subjects, self._worker_of(msg), self._metrics)

    def _worker_of(self, msg: NatsMessage) -> str:
        """The worker whose subject delivered `msg` (`retrieval`, `rerank`)."""
        return self._subjects.worker_for(_subject(msg))


class HeldMessages:
    """What the work-queue subscribers of `broker` fetched and have not started, handed back
    to JetStream (nak) the moment the worker stops, so another replica takes it at once.

    FastStream 0.7.8's concurrent pull subscriber fetches ahead of its handlers: a fetched
    message waits in a buffer, or for a free handler. On stop it neither acks nor naks those:
    one handed to `consume` after the stop began returns unhandled, the rest go with the
    cancelled tasks; JetStream redelivers them only after `ack_wait_s` (60 s by default, past
    the default 30 s deadline). This wraps each subscriber's two hand-over points (`_put_msg`:
    fetched; `consume`: about to start) to know what is held. Build it after the subscribers
    are registered and before the broker starts; call `hand_back` before the broker stops.

    Args:
        fetch_wait_s: how long a fetch waits for messages (`fetch_wait_ms`): `hand_back`
            waits as long, so what a fetch in flight brings is handed back too.
    """

    def __init__(self, broker: NatsBroker, fetch_wait_s: float) -> None:
        self._fetch_wait_s = fetch_wait_s
        self._held: dict[int, Msg] = {}
        self._stopping = False
        self._handed_back = 0
        self._subscribers = [
            s for s in broker.subscribers if isinstance(s, ConcurrentPullStreamSubscriber)
        ]
        for subscriber in self._subscribers:
            self._watch(subscriber)

    def _watch(self, subscriber: ConcurrentPullStreamSubscriber) -> None:
        queue, consume = subscriber._put_msg, subscriber.consume

        async def fetched(msg: Msg) -> None:
            if self._stopping:
                self._handed_back += 1
                await _nak(msg)
                return
            self._held[id(msg)] = msg
            await queue(msg)

        async def starting(msg: Msg) -> Any:
            held = self._held.pop(id(msg), None)
            if not self._stopping:
                return await consume(msg)
            if held is not None:
                self._handed_back += 1
                await _nak(msg)
            return None

        subscriber._put_msg = fetched  # type: ignore[method-assign]
        subscriber.consume = starting  # type: ignore[method-assign]

    async def hand_back(self) -> int:
        """Stop fetching and starting messages; nak at once every message held unstarted,
        and those a fetch in flight brings. Handlers already running go on: the broker's
        stop waits for them (`shutdown_grace_s`). Returns how many went back (the workers'
        stop line says it)."""
        self._stopping = True
        for subscriber in self._subscribers:
            subscriber.running = False  # FastStream's own flag: no new fetch, no new start
        held, self._held = list(self._held.values()), {}
        self._handed_back += len(held)
        for msg in held:
            await _nak(msg)
        await asyncio.sleep(self._fetch_wait_s)
        log.debug("handed back %d messages fetched but not started", self._handed_back)
        return self._handed_back


async def _nak(msg: Msg) -> None:
    try:
        await msg.nak()
    except (TimeoutError, nats.errors.Error) as error:  # it comes back after its ack wait
        log.warning("could not hand a message back: %r", error)


@dataclass(frozen=True)
class FailedMessage:
    body: bytes
    worker: str
    subject: str
    deliveries: int


async def give_up(
    replies: ReplySender, failed: FailedMessage, code: ErrorCode, reason: str
) -> None:
    """Keep the message as a dead letter, then answer its requester with an error."""
    body = failed.body
    address = reply_address(body, replies.subjects)
    kept = body[:MAX_KEPT_PAYLOAD]
    letter = DeadLetter(
        worker=failed.worker,
        subject=failed.subject,
        code=code,
        reason=reason,
        deliveries=failed.deliveries,
        request_id=address[0] if address else None,
        payload_preview=body[:PREVIEW_BYTES].decode("utf-8", errors="replace"),
        payload_base64=base64.b64encode(kept).decode(),
        payload_bytes=len(body),
        payload_sha256=hashlib.sha256(body).hexdigest(),
        truncated=len(kept) < len(body),
    )
    try:
        await replies.dead_letter(letter)
    except nats.errors.MaxPayloadError:
        # A server with a small max_payload: keep the description, preview and digest.
        await replies.dead_letter(
            letter.model_copy(update={"payload_base64": "", "truncated": True})
        )
    try:
        await answer_error(replies, body, code, reason)
    except Exception:  # the dead letter is kept; a failed answer must not redeliver it
        log.exception("could not send the error reply for a dead-lettered message")


async def answer_error(replies: ReplySender, body: bytes, code: ErrorCode, message: str) -> None:
    address = reply_address(body, replies.subjects)
    if address is None:
        log.warning("cannot answer a message without request_id/reply_to: %s", message)
        return
    request_id, reply_to = address
    await replies.send_error(reply_to, request_id, code, message)


class MaxDeliveriesAdvisory(BaseModel):
    """What JetStream says when a consumer gives up on a message (ack wait ran out on its
    last delivery: typically a worker that crashed or hung on it every time)."""

    model_config = ConfigDict(extra="ignore")

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


def watch_max_deliveries(broker: NatsBroker, settings: Settings, metrics: Metrics) -> None:
    """Dead-letter messages JetStream stopped delivering. The advisories are kept in a work
    queue stream, so a replica handles each once, even if none ran when it was emitted."""
    subjects = Subjects.from_settings(settings)

    async def on_max_deliveries(advisory: MaxDeliveriesAdvisory) -> None:
        js = broker.connection.jetstream()
        try:
            original = await js.get_msg(advisory.stream, advisory.stream_seq)
        except NotFoundError:
            return  # already acknowledged or removed: nothing was lost
        worker = subjects.worker_for(advisory.stream)
        failed = FailedMessage(
            original.data or b"", worker, original.subject or "", advisory.deliveries
        )
        reason = f"not acknowledged after {advisory.deliveries} deliveries"
        replies = ReplySender(broker, subjects, worker, metrics)
        await give_up(replies, failed, ErrorCode.INTERNAL, reason)
        await js.delete_msg(advisory.stream, advisory.stream_seq)

    for stream in work_queue_streams(subjects):
        broker.subscriber(
            subjects.max_deliveries_advisory(stream),
            stream=JStream(subjects.streams.advisories, declare=False),
            durable=f"{subjects.prefix}-dead-letters-{stream.lower()}",
            pull_sub=PullSub(batch_size=1, timeout=1.0),
            include_in_schema=False,
        )(on_max_deliveries)


def reply_address(body: bytes, subjects: Subjects) -> tuple[str, str] | None:
    """(request_id, reply_to) from a request or a candidate set, even a malformed one; None
    when there is no safe place to answer, e.g. a reply_to outside the results subjects (a
    worker publishes nothing, not even an error, where a requester merely asked it to)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    # A candidate set carries its request's address in its plan.
    request = data.get("plan", data) if isinstance(data, dict) else None
    if not isinstance(request, dict):
        return None
    request_id, reply_to = request.get("request_id"), request.get("reply_to")
    if not (isinstance(request_id, str) and isinstance(reply_to, str)):
        return None
    if not request_id or len(reply_to) > 255 or not SUBJECT.fullmatch(reply_to):
        return None
    if not subjects.is_results_subject(reply_to):
        return None
    if not (_encodable(request_id) and _encodable(reply_to)):
        return None
    return request_id[:128], reply_to


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _code(error: Exception) -> ErrorCode:
    return error.code if isinstance(error, RankstreamError) else ErrorCode.INVALID_REQUEST


def _describe(error: Exception) -> str:
    if isinstance(error, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
            for e in error.errors()[:5]
        )
        return f"invalid message: {problems}"
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
        return f"invalid message: undecodable: {error}"
    if isinstance(error, nats.errors.MaxPayloadError):
        return (
            "what this request needs published (its candidates or its answer) is over the NATS "
            "server's max_payload: ask for fewer or shorter documents, return_documents false, "
            "or raise max_payload (infra/nats/nats-server.conf)"
        )
    return str(error)


def _subject(msg: NatsMessage) -> str:
    return str(getattr(msg.raw_message, "subject", "") or "")


def _deliveries(msg: NatsMessage) -> int:
    """How many times JetStream has delivered `msg` (1 for a message that is not
    JetStream's, e.g. in FastStream's TestNatsBroker)."""
    try:
        metadata = msg.raw_message.metadata
    except (AttributeError, nats.errors.Error):  # not a JetStream message
        return 1
    return int(getattr(metadata, "num_delivered", 1) or 1)
