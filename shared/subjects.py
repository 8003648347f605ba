"""Subject and stream names, all derived from the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subjects:
    prefix: str

    @property
    def queries(self) -> str:
        return f"{self.prefix}.queries"

    @property
    def candidates(self) -> str:
        return f"{self.prefix}.candidates"

    @property
    def results_root(self) -> str:
        return f"{self.prefix}.results"

    def results_for(self, client_id: str) -> str:
        """Each client listens on its own results subject."""
        return f"{self.results_root}.{client_id}"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}.dead_letters"

    @property
    def dead_letters_stream(self) -> str:
        return f"{self._stream_base}_DEAD_LETTERS"

    def max_deliveries_advisory(self, stream: str) -> str:
        """JetStream's advisory for a message a consumer of `stream` gave up on."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*"

    @property
    def advisories_stream(self) -> str:
        return f"{self._stream_base}_ADVISORIES"

    @property
    def queries_stream(self) -> str:
        return f"{self._stream_base}_QUERIES"

    @property
    def candidates_stream(self) -> str:
        return f"{self._stream_base}_CANDIDATES"

    @property
    def results_stream(self) -> str:
        return f"{self._stream_base}_RESULTS"

    @property
    def retrieval_durable(self) -> str:
        return f"{self.prefix}-retrieval"

    @property
    def rerank_durable(self) -> str:
        return f"{self.prefix}-rerank"

    @property
    def _stream_base(self) -> str:
        return self.prefix.upper().replace("-", "_")
