"""What every worker is built with: its settings, the broker it subscribes on, where it
reports, and the result cache (None: off)."""

from __future__ import annotations

from dataclasses import dataclass

from faststream.nats import NatsBroker

from rankstream.cache.store import ResultCache
from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.wire.subjects import Subjects


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    broker: NatsBroker
    metrics: Metrics
    cache: ResultCache | None = None

    @property
    def subjects(self) -> Subjects:
        return Subjects.from_settings(self.settings)
