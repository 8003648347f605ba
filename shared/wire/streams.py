"""The JetStream topology: one place that says which streams exist and how they behave.

- QUERIES, CANDIDATES and RERANK (requests that bring their own candidates) are work
  queues: each message is handed to one replica of the worker that shares the stream's
  durable consumer, and removed once acknowledged.
- ADVISORIES keeps JetStream's "gave up on this message" advisories for our two work
  queues until a worker has dead-lettered the message they name.
- DEAD_LETTERS keeps, for two weeks, every message that will never be answered normally,
  up to `dead_letters_max_bytes`: when full, a new dead letter is refused (discard new: the
  first ones are kept), and the worker logs and counts it
  (`rankstream_dead_letters_dropped_total`); the requester still gets its error.
- RESULTS keeps answers for a while, with a duplicate window: a result published twice
  under the same `Nats-Msg-Id` (after a redelivery) is stored once. At most
  `results_max_bytes`: when full, the oldest answers are dropped (discard old), so an answer
  is never refused.
- KV_<PREFIX>_CACHE is the result cache's key-value bucket (rankstream/cache.py): one
  entry a key, entries expire after `cache_ttl_s` (with a marker the watchers see), the
  oldest are dropped first when it is full.
- KV_<PREFIX>_ANSWERED records, for the results stream's duplicate window, which requests
  were answered (keyed by request): a request JetStream delivers again after its answer was
  published is acknowledged without being worked on again (rankstream/workers/replies.py).

Workers create the streams that are missing and never change one that exists: an operator
may have set its replicas, limits or retention on purpose. What differs from the settings
below is logged as a warning; a stream whose subjects or retention would break delivery is
refused with a StreamConfigError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import nats
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from rankstream.config import Settings
from rankstream.errors import StreamConfigError
from rankstream.wire.connection import connect_kwargs
from rankstream.wire.subjects import Subjects

log = logging.getLogger(__name__)

RESULTS_MAX_AGE_S = 600.0
DEAD_LETTERS_MAX_AGE_S = 14 * 24 * 3600.0
DUPLICATE_WINDOW_S = 120.0
DEFAULT_DUPLICATE_WINDOW_S = 120.0  # nats-server's, for a stream created without one
CACHE_MARKER_TTL_S = 60.0  # how long the marker of an expired cache entry stays
API_PATIENCE_S = 30.0  # how long a start waits on a JetStream API that does not answer


# What a stream an operator made may differ in without a warning being worth it.
CHECKED_FIELDS = (
    "retention",
    "storage",
    "num_replicas",
    "max_age",
    "duplicate_window",
    "max_bytes",
    "discard",
)
# ... and what it may not differ in at all: delivery depends on it.
REQUIRED_FIELDS = ("retention",)


def cache_stream_config(subjects: Subjects, ttl_s: float, max_bytes: int) -> StreamConfig:
    """The result cache's bucket, as nats-py's `create_key_value` lays one out (so
    `js.key_value()` opens it), but dropping the oldest entries when full, as a cache should."""
    return StreamConfig(
        name=f"KV_{subjects.cache_bucket}",
        subjects=[f"$KV.{subjects.cache_bucket}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.OLD,
        duplicate_window=min(DUPLICATE_WINDOW_S, ttl_s),
        max_age=ttl_s,
        max_bytes=max_bytes,
        max_msgs_per_subject=1,
        subject_delete_marker_ttl=CACHE_MARKER_TTL_S,
    )


def answered_stream_config(subjects: Subjects) -> StreamConfig:
    """The record of answered requests: a key-value bucket (`js.key_value()` opens it) whose
    entries live as long as the results stream's duplicate window, past which a second
    answer would not be dropped either."""
    return StreamConfig(
        name=f"KV_{subjects.answered_bucket}",
        subjects=[f"$KV.{subjects.answered_bucket}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=True,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=DUPLICATE_WINDOW_S,
        max_msgs_per_subject=1,
    )


def work_queue_streams(subjects: Subjects) -> tuple[str, ...]:
    """The work-queue streams: whatever JetStream gives up on in them is dead-lettered."""
    streams = subjects.streams
    return (streams.queries, streams.candidates, streams.rerank)


@dataclass(frozen=True)
class StreamBounds:
    """Bytes the results and dead-letter streams may hold (settings `results_max_bytes`,
    `dead_letters_max_bytes`)."""

    results_max_bytes: int = 256 << 20
    dead_letters_max_bytes: int = 256 << 20

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamBounds:
        return cls(settings.results_max_bytes, settings.dead_letters_max_bytes)


def stream_configs(
    subjects: Subjects,
    replicas: int = 1,
    cache: StreamConfig | None = None,
    bounds: StreamBounds = StreamBounds(),
) -> list[StreamConfig]:
    """The streams rankstream needs, each with `replicas` copies (3 on a NATS cluster);
    `cache`: the result cache's bucket too; `bounds`: the results' and dead letters' size."""
    configs = [
        _work_queue(subjects.streams.queries, subjects.queries),
        _work_queue(subjects.streams.candidates, subjects.candidates),
        _work_queue(subjects.streams.rerank, subjects.rerank),
        StreamConfig(
            name=subjects.streams.results,
            subjects=[f"{subjects.results_root}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=RESULTS_MAX_AGE_S,
            max_bytes=bounds.results_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        StreamConfig(
            name=subjects.streams.advisories,
            subjects=[
                subjects.max_deliveries_advisory(stream) for stream in work_queue_streams(subjects)
            ],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        ),
        StreamConfig(
            name=subjects.streams.dead_letters,
            subjects=[subjects.dead_letters],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=DEAD_LETTERS_MAX_AGE_S,
            max_bytes=bounds.dead_letters_max_bytes,
            discard=DiscardPolicy.NEW,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        answered_stream_config(subjects),
    ]
    if cache is not None:
        configs.append(cache)
    for config in configs:
        config.num_replicas = replicas
    return configs


def _work_queue(name: str, subject: str) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_streams_on(
    js: JetStreamContext,
    subjects: Subjects,
    replicas: int = 1,
    cache: StreamConfig | None = None,
    bounds: StreamBounds = StreamBounds(),
) -> list[str]:
    """Create the missing streams; check the existing ones, keep them as they are, and
    return (and log) how they differ. Raises StreamConfigError when one cannot serve."""
    differences: list[str] = []
    for wanted in stream_configs(subjects, replicas, cache, bounds):
        differences += await _ensure_stream(js, wanted)
    for difference in differences:
        log.warning("%s; keeping the stream as it is", difference)
    return differences


async def _ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> list[str]:
    """Create or check one stream. On a NATS cluster the JetStream API can be slow or silent
    for a few seconds (replicas starting side by side, a meta-leader election): ask again
    until API_PATIENCE_S has passed; a create that timed out may have happened, so each try
    looks first."""
    assert wanted.name is not None
    give_up = time.monotonic() + API_PATIENCE_S
    while True:
        try:
            return await _ensure_stream_once(js, wanted)
        except (TimeoutError, NoRespondersError, ServiceUnavailableError) as error:
            if time.monotonic() > give_up:
                raise
            log.info(
                "JetStream API did not answer for stream %s (%r); asking again", wanted.name, error
            )
            await asyncio.sleep(0.5)


async def _ensure_stream_once(js: JetStreamContext, wanted: StreamConfig) -> list[str]:
    assert wanted.name is not None
    try:
        existing = (await js.stream_info(wanted.name)).config
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            return []
        except BadRequestError:  # another replica created it meanwhile
            existing = (await js.stream_info(wanted.name)).config
    return stream_differences(wanted, existing)


def stream_differences(wanted: StreamConfig, existing: StreamConfig) -> list[str]:
    """How `existing` differs from what rankstream would create; raises StreamConfigError
    where the difference breaks delivery (retention, or subjects that miss ours)."""
    missing = set(wanted.subjects or []) - set(existing.subjects or [])
    if missing:
        raise StreamConfigError(
            f"stream {wanted.name} exists without the subjects {sorted(missing)}"
        )
    differences = []
    for field in CHECKED_FIELDS:
        ours, theirs = _or_default(wanted, field), _or_default(existing, field)
        if ours == theirs:
            continue
        if field in REQUIRED_FIELDS:
            raise StreamConfigError(f"stream {wanted.name} has {field} {theirs}, not {ours}")
        differences.append(
            f"stream {wanted.name}: {field} is {theirs}, rankstream would set {ours}"
        )
    return differences


# What the server stores for a field a stream was created without: a stream rankstream
# created itself must not read back as different (max_age None comes back as 0.0, an unset
# duplicate window as two minutes).
SERVER_DEFAULTS = {
    "storage": StorageType.FILE,
    "num_replicas": 1,
    "max_age": 0.0,
    "duplicate_window": DEFAULT_DUPLICATE_WINDOW_S,
    "max_bytes": -1,  # unbounded
    "discard": DiscardPolicy.OLD,
}


def _or_default(config: StreamConfig, field: str) -> object:
    """The field's value, the server's default where it was left unset (None, or 0, which
    nats-py sends for an unset duplicate window or replica count)."""
    value = getattr(config, field)
    return SERVER_DEFAULTS.get(field, value) if value in (None, 0) else value


async def ensure_streams(settings: Settings) -> list[str]:
    """`ensure_streams_on` over a connection of its own; returns the differences."""
    connection = await nats.connect(**connect_kwargs(settings))
    try:
        subjects = Subjects.from_settings(settings)
        cache = (
            cache_stream_config(subjects, settings.cache_ttl_s, settings.cache_max_bytes)
            if settings.cache_ttl_s > 0
            else None
        )
        return await ensure_streams_on(
            connection.jetstream(),
            subjects,
            settings.stream_replicas,
            cache,
            StreamBounds.from_settings(settings),
        )
    finally:
        await connection.close()
