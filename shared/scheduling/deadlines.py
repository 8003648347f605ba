"""When a worker must act on a request: a margin before its deadline, so that the answer it
sends then (degraded, expired or overloaded) still reaches a client that gives up at the
deadline itself."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from rankstream.wire.contract import now_ms


class Timed(Protocol):
    """What a deadline is taken from (a `QueryPlan`)."""

    @property
    def deadline_ms(self) -> float: ...

    @property
    def timeout_ms(self) -> int: ...


# The margin never takes more than this share of a request's whole timeout.
MAX_MARGIN_SHARE = 0.25


@dataclass(frozen=True)
class Deadline:
    """`at_ms` is wall-clock milliseconds (comparable across processes on one host)."""

    at_ms: float

    @classmethod
    def of(cls, request: Timed, margin_ms: float) -> Deadline:
        """The request's deadline less `margin_ms`, at most a quarter of its timeout."""
        margin = min(margin_ms, request.timeout_ms * MAX_MARGIN_SHARE)
        return cls(request.deadline_ms - margin)

    def remaining_s(self) -> float:
        """Seconds left (negative once passed)."""
        return (self.at_ms - now_ms()) / 1000

    def passed(self) -> bool:
        return self.remaining_s() <= 0

    def monotonic(self) -> float:
        """The same instant on `time.monotonic`'s clock, as the micro-batcher takes it."""
        return time.monotonic() + self.remaining_s()
