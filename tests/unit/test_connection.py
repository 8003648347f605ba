"""How the workers and the client reach NATS: every server of RANKSTREAM_NATS_URL, and pings
that give up on a silent server (a partitioned node) in seconds, not minutes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rankstream.config import Settings
from rankstream.wire.connection import (
    MAX_OUTSTANDING_PINGS,
    PING_INTERVAL_S,
    broker_kwargs,
    connect_kwargs,
)

CLUSTER = "nats://n1:4222, nats://n2:4222,n3:4222"


def test_every_server_of_a_comma_separated_url_is_given_to_both_clients() -> None:
    settings = Settings(nats_url=CLUSTER)
    expected = ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
    assert connect_kwargs(settings)["servers"] == expected
    assert broker_kwargs(settings)["servers"] == expected


def test_a_silent_server_is_left_within_fifteen_seconds_by_both_clients() -> None:
    settings = Settings(nats_url=CLUSTER)
    for kwargs in (connect_kwargs(settings), broker_kwargs(settings)):
        assert kwargs["ping_interval"] == PING_INTERVAL_S
        assert kwargs["max_outstanding_pings"] == MAX_OUTSTANDING_PINGS
    assert PING_INTERVAL_S * (MAX_OUTSTANDING_PINGS + 1) <= 15


def test_a_server_list_with_a_bad_port_is_refused_without_its_password() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(nats_url="nats://n1:4222,nats://user:hunter2@n2:42x2")
    (error,) = raised.value.errors()
    assert "no valid port" in error["msg"]
    assert "hunter2" not in error["msg"]
