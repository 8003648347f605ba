"""Subject, stream and durable-consumer names, all derived from the configured prefix.

For prefix `p`: subjects `p.queries`, `p.candidates`, `p.results.<client>`,
`p.dead_letters`; streams `P_QUERIES`, `P_CANDIDATES`, `P_RESULTS`, `P_DEAD_LETTERS`,
`P_ADVISORIES`; durable consumers `p-retrieval`, `p-rerank`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rankstream.config import Settings


@dataclass(frozen=True)
class Subjects:
    prefix: str
    queries: str = field(init=False)
    candidates: str = field(init=False)
    results_root: str = field(init=False)
    dead_letters: str = field(init=False)
    queries_stream: str = field(init=False)
    candidates_stream: str = field(init=False)
    results_stream: str = field(init=False)
    dead_letters_stream: str = field(init=False)
    advisories_stream: str = field(init=False)
    retrieval_durable: str = field(init=False)
    rerank_durable: str = field(init=False)

    def __post_init__(self) -> None:
        stream_base = self.prefix.upper().replace("-", "_")
        names = {
            "queries": f"{self.prefix}.queries",
            "candidates": f"{self.prefix}.candidates",
            "results_root": f"{self.prefix}.results",
            "dead_letters": f"{self.prefix}.dead_letters",
            "queries_stream": f"{stream_base}_QUERIES",
            "candidates_stream": f"{stream_base}_CANDIDATES",
            "results_stream": f"{stream_base}_RESULTS",
            "dead_letters_stream": f"{stream_base}_DEAD_LETTERS",
            "advisories_stream": f"{stream_base}_ADVISORIES",
            "retrieval_durable": f"{self.prefix}-retrieval",
            "rerank_durable": f"{self.prefix}-rerank",
        }
        for name, value in names.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_settings(cls, settings: Settings) -> Subjects:
        return cls(settings.subject_prefix)

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
        if subject_or_stream in (self.queries, self.queries_stream):
            return "retrieval"
        if subject_or_stream in (self.candidates, self.candidates_stream):
            return "rerank"
        return "unknown"
