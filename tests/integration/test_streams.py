"""Starting a worker creates the JetStream streams that are missing and leaves the ones an
operator configured as they are: checked, warned about, never overwritten."""

from __future__ import annotations

import logging

import nats
import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from rankstream.config import Settings
from rankstream.errors import StreamConfigError
from rankstream.wire.streams import ensure_streams, stream_configs
from rankstream.wire.subjects import Subjects

pytestmark = pytest.mark.integration


async def test_missing_streams_are_created(settings: Settings) -> None:
    assert await ensure_streams(settings) == []

    # Asked one by one: the server lists streams a page (256) at a time, and the shared test
    # server holds more than a page of other tests' streams.
    connection = await nats.connect(settings.effective_nats_url)
    js = connection.jetstream()
    for config in stream_configs(Subjects.from_settings(settings)):
        assert config.name is not None
        info = await js.stream_info(config.name)
        assert info.config.subjects == config.subjects
    await connection.close()


async def test_an_operators_stream_settings_are_kept_and_the_difference_is_warned_about(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    subjects = Subjects.from_settings(settings)
    connection = await nats.connect(settings.effective_nats_url)
    js = connection.jetstream()
    operators = StreamConfig(
        name=subjects.streams.queries,
        subjects=[subjects.queries],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.MEMORY,
        max_age=3600.0,
        max_msgs=5_000,
    )
    await js.add_stream(operators)
    caplog.set_level(logging.WARNING)

    differences = await ensure_streams(settings)

    kept = (await js.stream_info(subjects.streams.queries)).config
    await connection.close()
    assert (kept.storage, kept.max_age, kept.max_msgs) == (StorageType.MEMORY, 3600.0, 5_000)
    assert any("storage" in d and subjects.streams.queries in d for d in differences)
    assert any("max_age" in d for d in differences)
    assert "keeping the stream as it is" in caplog.text


async def test_a_stream_that_cannot_serve_is_refused_with_a_clear_error(
    settings: Settings,
) -> None:
    subjects = Subjects.from_settings(settings)
    connection = await nats.connect(settings.effective_nats_url)
    await connection.jetstream().add_stream(
        name=subjects.streams.queries, subjects=[subjects.queries], retention=RetentionPolicy.LIMITS
    )
    await connection.close()

    with pytest.raises(StreamConfigError, match="retention"):
        await ensure_streams(settings)


async def test_an_unbounded_results_stream_from_before_the_bounds_is_warned_about(
    settings: Settings,
) -> None:
    subjects = Subjects.from_settings(settings)
    connection = await nats.connect(settings.effective_nats_url)
    js = connection.jetstream()
    await js.add_stream(
        StreamConfig(
            name=subjects.streams.results,
            subjects=[f"{subjects.results_root}.>"],
            max_age=600.0,
            duplicate_window=120.0,
        )
    )
    differences = await ensure_streams(settings)
    await connection.close()
    assert [d for d in differences if subjects.streams.results in d] == [
        f"stream {subjects.streams.results}: max_bytes is -1, rankstream would set "
        f"{settings.results_max_bytes}"
    ]
