"""What the workers' logs say and leave out: the line a started process logs once it serves
(what `WorkerProcess` waits for), and without FastStream's per-message INFO lines and its
traceback for an idle JetStream pull, neither of which a user can act on."""

from __future__ import annotations

import logging

READY_LINE = "ready; Ctrl-C to stop"
FASTSTREAM_LOGGER = "rankstream.faststream"
SUPERVISOR_RETRY = "raised an exception, retrying"


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
