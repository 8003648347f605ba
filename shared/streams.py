"""The JetStream topology: one place that says which streams exist and how they behave.

- QUERIES and CANDIDATES are work queues: each message is handed to one replica of the
  worker that shares the stream's durable consumer, and removed once acknowledged.
- ADVISORIES keeps JetStream's "gave up on this message" advisories for our two work
  queues until a worker has dead-lettered the message they name.
- DEAD_LETTERS keeps, for two weeks, every message that will never be answered normally.
- RESULTS keeps answers for a while, with a duplicate window: a result published twice
  under the same `Nats-Msg-Id` (after a redelivery) is stored once.
"""

from __future__ import annotations

import nats
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from shared.config import Settings
from shared.connection import connect_kwargs
from shared.subjects import Subjects

RESULTS_MAX_AGE_S = 600.0
DEAD_LETTERS_MAX_AGE_S = 14 * 24 * 3600.0
DUPLICATE_WINDOW_S = 120.0


def stream_configs(subjects: Subjects) -> list[StreamConfig]:
    return [
        _work_queue(subjects.queries_stream, subjects.queries),
        _work_queue(subjects.candidates_stream, subjects.candidates),
        StreamConfig(
            name=subjects.results_stream,
            subjects=[f"{subjects.results_root}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=RESULTS_MAX_AGE_S,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        StreamConfig(
            name=subjects.advisories_stream,
            subjects=[
                subjects.max_deliveries_advisory(stream)
                for stream in (subjects.queries_stream, subjects.candidates_stream)
            ],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        ),
        StreamConfig(
            name=subjects.dead_letters_stream,
            subjects=[subjects.dead_letters],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=DEAD_LETTERS_MAX_AGE_S,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
    ]


def _work_queue(name: str, subject: str) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_streams_on(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the streams, or bring existing ones to this configuration."""
    for config in stream_configs(subjects):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)


async def ensure_streams(settings: Settings) -> None:
    connection = await nats.connect(**connect_kwargs(settings))
    try:
        await ensure_streams_on(connection.jetstream(), Subjects(settings.subject_prefix))
    finally:
        await connection.close()
