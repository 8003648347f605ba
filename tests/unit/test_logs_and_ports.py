"""The command line's log lines and its port check, without starting anything."""

from __future__ import annotations

import io
import logging
import socket
import sys

import nats.errors
import pytest

from rankstream.workers.logs import ConnectionErrorsInOneLine, setup_logging
from rankstream.workers.ports import Listener, first_unavailable


def record(message: str, error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord("nats.aio.client", logging.ERROR, __file__, 1, message, None, exc_info)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4222)"),
        nats.errors.UnexpectedEOF(),
        nats.errors.ConnectionReconnectingError(),
    ],
)
def test_a_connection_error_is_one_line_without_its_traceback(error: BaseException) -> None:
    one_line = ConnectionErrorsInOneLine()
    logged = record("nats: encountered error", error)
    assert one_line.filter(logged)
    assert logged.exc_info is None
    assert logged.getMessage().startswith(f"nats: encountered error: {type(error).__name__}")
    assert "\n" not in logged.getMessage()


def test_the_same_connection_error_again_is_not_repeated_within_the_window() -> None:
    one_line = ConnectionErrorsInOneLine(repeat_s=60)
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4222)")
    assert one_line.filter(record("nats: encountered error", refused))
    assert not one_line.filter(record("nats: encountered error", refused))
    other = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4223)")
    assert one_line.filter(record("nats: encountered error", other))
    assert ConnectionErrorsInOneLine(repeat_s=0).filter(record("nats: encountered error", refused))


def test_any_other_error_keeps_its_traceback() -> None:
    bug = ValueError("a bug")
    logged = record("handler failed", bug)
    assert ConnectionErrorsInOneLine().filter(logged)
    assert logged.exc_info is not None
    assert logged.getMessage() == "handler failed"


def test_logs_to_a_file_are_plain_lines_never_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    level = root.level
    handler = setup_logging()
    try:
        long = "x" * 300
        logging.getLogger("rankstream.test").info("a long line: %s", long)
        logging.getLogger("uvicorn.error").info("Started server process [1]")  # chatty
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(f"INFO    a long line: {long}")


def test_a_busy_port_is_named_with_how_to_change_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problem = first_unavailable([
            Listener("/metrics", 0, "0.0.0.0", "never checked: 0"),
            Listener("the gateway", port, "127.0.0.1", "set RANKSTREAM_GATEWAY_PORT"),
        ])  # fmt: skip
    assert problem == f"port {port} (the gateway) is in use: set RANKSTREAM_GATEWAY_PORT"


def test_one_port_given_to_two_listeners_is_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    problem = first_unavailable([
        Listener("/metrics", port, "0.0.0.0", "set RANKSTREAM_METRICS_PORT"),
        Listener("the gateway", port, "127.0.0.1", "set RANKSTREAM_GATEWAY_PORT"),
    ])  # fmt: skip
    assert problem == (
        f"port {port} is set for both /metrics and the gateway: set RANKSTREAM_GATEWAY_PORT"
    )


def test_free_ports_pass() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert first_unavailable([Listener("the gateway", port, "127.0.0.1", "")]) is None
