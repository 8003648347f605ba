"""What the processes' logs say and leave out.

- The line a started process logs once it serves (what `WorkerProcess` waits for).
- FastStream without its per-message INFO lines and its traceback for an idle JetStream pull,
  neither of which a user can act on.
- `setup_logging`: the command line's handler. Rich on a terminal; on a file or a pipe, plain
  lines that never wrap (a log file is read with grep, not at 80 columns). A lost NATS
  connection is said in one line, not a traceback per reconnect attempt, and the same line
  is said once a minute at most while it lasts; every other record passes as it came.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

READY_LINE = "ready; Ctrl-C to stop"
FASTSTREAM_LOGGER = "rankstream.faststream"
SUPERVISOR_RETRY = "raised an exception, retrying"
PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
PLAIN_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# The same one-line connection error again within this many seconds is not logged again.
REPEAT_S = 60.0
# Libraries that log at INFO what `up` and the workers already say in their own lines
# (uvicorn: "Started server process", "Shutting down", ...; sentence-transformers: which
# folder it loads): WARNING and above pass, unless --verbose.
CHATTY_LOGGERS = ("uvicorn.error", "sentence_transformers")
OURS = "_rankstream_handler"  # marks the handler `setup_logging` installed


class IdlePullTimeouts(logging.Filter):
    """Drops FastStream's "Task-N raised an exception, retrying..." record for a built-in
    `TimeoutError`.

    FastStream 0.7.8 suppresses nats-py's `nats.errors.TimeoutError` around a pull that finds
    no message, but nats-py 2.16 raises the built-in `TimeoutError` there, after collecting
    nothing. FastStream's supervisor then logs a traceback and restarts the pull, which is what
    an idle worker should do anyway: nothing is lost, so the record is noise. Any other
    exception, and any other record, passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        idle_pull = type(error) is TimeoutError and SUPERVISOR_RETRY in record.getMessage()
        return not idle_pull


def quiet_faststream_logger() -> logging.Logger:
    """The logger the broker is given: warnings and errors only (FastStream logs a line at INFO
    for every finished task and message, which floods the log under load), without idle-pull
    timeouts."""
    logger = logging.getLogger(FASTSTREAM_LOGGER)
    logger.setLevel(logging.WARNING)
    if not any(isinstance(f, IdlePullTimeouts) for f in logger.filters):
        logger.addFilter(IdlePullTimeouts())
    return logger


def is_connection_error(error: BaseException | None) -> bool:
    """A NATS connection that broke, was refused or timed out: the network's doing, told by
    its type and message alone (its traceback shows nats-py's and asyncio's insides)."""
    if error is None:
        return False
    import nats.errors

    return isinstance(error, OSError | TimeoutError | nats.errors.Error)


class ConnectionErrorsInOneLine(logging.Filter):
    """A record carrying a connection error (`is_connection_error`) loses its traceback and
    gains the error's type and message on its line; the same line again within `repeat_s` is
    dropped (nats-py reports every reconnect attempt, every two seconds, while NATS is
    away). Records of any other error keep their traceback: a bug must show where it is."""

    def __init__(self, repeat_s: float = REPEAT_S) -> None:
        super().__init__()
        self._repeat_s = repeat_s
        self._said: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not is_connection_error(error):
            return True
        assert error is not None
        said = record.getMessage()
        kind = type(error).__name__
        line = said if kind in said else f"{said}: {kind}: {error}".rstrip(": ")
        now = time.monotonic()
        if now - self._said.get(line, -self._repeat_s) < self._repeat_s:
            return False
        self._said[line] = now
        record.msg, record.args = line, None
        record.exc_info, record.exc_text = None, None
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever `sys.stderr` is when it writes (a test runner swaps it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(verbose: bool = False) -> logging.Handler:
    """The process's log handler, on stderr: Rich's on a terminal, one plain line per record
    otherwise. `verbose`: DEBUG and above, every library's INFO, and full tracebacks. Called
    again, it replaces the handler it installed before (and no other)."""
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, PLAIN_DATE_FORMAT))
    if not verbose:
        handler.addFilter(ConnectionErrorsInOneLine())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, OURS, False)]:
        root.removeHandler(old)
    setattr(handler, OURS, True)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    return handler
