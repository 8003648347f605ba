"""Subject, stream and durable-consumer names, all derived from the configured prefix.

For prefix `p`: subjects `p.queries`, `p.candidates`, `p.rerank` (bring your own
candidates), `p.results.<client>`, `p.dead_letters`; streams `P_QUERIES`, `P_CANDIDATES`,
`P_RERANK`, `P_RESULTS`, `P_DEAD_LETTERS`, `P_ADVISORIES`; the result cache's key-value bucket
`P_CACHE` (stream `KV_P_CACHE`), the record of answered requests `P_ANSWERED`; durable
consumers `p-retrieval`, `p-rerank`, `p-rerank-direct`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rankstream.config import Settings


@dataclass(frozen=True)
class Streams:
    """The JetStream streams, by what they hold."""

    queries: str
    candidates: str
    rerank: str
    results: str
    dead_letters: str
    advisories: str

    @classmethod
    def named(cls, base: str) -> Streams:
        return cls(*(f"{base}_{part}" for part in ("QUERIES", "CANDIDATES", "RERANK", "RESULTS",
                                                  "DEAD_LETTERS", "ADVISORIES")))  # fmt: skip


@dataclass(frozen=True)
class Subjects:
    prefix: str
    queries: str = field(init=False)
    candidates: str = field(init=False)
    rerank: str = field(init=False)
    results_root: str = field(init=False)
    dead_letters: str = field(init=False)
    streams: Streams = field(init=False)
    cache_bucket: str = field(init=False)
    answered_bucket: str = field(init=False)

    def __post_init__(self) -> None:
        base = self.prefix.upper().replace("-", "_")
        names = {
            "queries": f"{self.prefix}.queries",
            "candidates": f"{self.prefix}.candidates",
            "rerank": f"{self.prefix}.rerank",
            "results_root": f"{self.prefix}.results",
            "dead_letters": f"{self.prefix}.dead_letters",
            "streams": Streams.named(base),
            "cache_bucket": f"{base}_CACHE",
            "answered_bucket": f"{base}_ANSWERED",
        }
        for name, value in names.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_settings(cls, settings: Settings) -> Subjects:
        return cls(settings.subject_prefix)

    def durable(self, worker: str) -> str:
        """The durable consumer every replica of `worker` (retrieval, rerank) shares."""
        return f"{self.prefix}-{worker}"

    def is_results_subject(self, subject: str) -> bool:
        """Whether `subject` lies under the results root: the only subjects a worker answers
        on, so a request cannot make a worker publish anywhere else it may (the cache bucket,
        the work queues)."""
        return subject.startswith(self.results_root + ".")

    def results_for(self, client_id: str) -> str:
        """Each client listens on its own results subject."""
        return f"{self.results_root}.{client_id}"

    @staticmethod
    def max_deliveries_advisory(stream: str) -> str:
        """JetStream's advisory for a message a consumer of `stream` gave up on."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*"

    def worker_for(self, subject_or_stream: str) -> str:
        """The worker that consumes a subject or stream: `retrieval` (queries), `rerank`
        (candidates), or `unknown`."""
        if subject_or_stream in (self.queries, self.streams.queries):
            return "retrieval"
        if subject_or_stream in (
            self.candidates,
            self.streams.candidates,
            self.rerank,
            self.streams.rerank,
        ):
            return "rerank"
        return "unknown"
