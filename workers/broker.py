"""The FastStream broker and the JetStream subscription settings both workers share."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.js.api import AckPolicy as ConsumerAckPolicy
from prometheus_client import REGISTRY

from shared.config import Settings
from shared.connection import broker_kwargs
from workers.delivery import DeliveryGuard

# Pull consumers only receive what a replica asks for, so each replica bounds its own
# in-flight messages; this server-side cap is shared by all replicas and must not be what
# limits a scaled-out deployment (it stops delivery silently when reached).
MAX_ACK_PENDING = 20_000


def build_broker(settings: Settings) -> NatsBroker:
    # FastStream 0.7.8 logs a line at INFO for every finished task and message; under load
    # that floods the log, so its logger reports warnings and errors only.
    faststream_log = logging.getLogger("rankstream.faststream")
    faststream_log.setLevel(logging.WARNING)
    broker = NatsBroker(
        **broker_kwargs(settings),
        middlewares=[NatsPrometheusMiddleware(registry=REGISTRY)],
        max_reconnect_attempts=-1,
        logger=faststream_log,
        # On stop, wait this long for handlers to finish and acknowledge what they hold.
        graceful_timeout=settings.shutdown_grace_s,
    )
    broker.add_middleware(partial(DeliveryGuard, broker=broker, settings=settings))
    return broker


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
