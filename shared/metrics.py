"""Every Prometheus metric rankstream exports, declared once, on a registry you pass in.

A process builds one `Metrics` and hands it to everything that reports: both workers (when
`rankstream up` runs them in one process), FastStream's middleware and the `/metrics`
endpoint. Tests build their own, so no two share a counter.
"""

from __future__ import annotations

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from rankstream.scheduling.batcher import BatchStats
from rankstream.wire.contract import StageTimings

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25,
    0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
PAIR_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
TOKEN_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
PADDING_BUCKETS = (1.0, 1.02, 1.05, 1.1, 1.15, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0)

__all__ = ["Metrics", "process_registry"]


def process_registry() -> CollectorRegistry:
    """A new registry with the process, platform and GC collectors the default one has."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Metrics:
    """The metric objects, registered on `registry` (default: a new `process_registry()`).

    Args:
        registry: where the metrics are registered and served from. Two `Metrics` on one
            registry raise ValueError (duplicate time series): share one instance instead.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = process_registry() if registry is None else registry
        r = self.registry
        self.stage_seconds = Histogram(
            "rankstream_stage_seconds",
            "Time a request spent in each stage (stage=queue_wait|embed|search|"
            "rerank_queue_wait|batch_wait|inference|total).",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_batch_seconds = Histogram(
            "rankstream_model_batch_seconds",
            "Wall time of one model call (model=embedder, or the rerank scorer: ce, ...).",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rerank_batch_pairs = Histogram(
            "rankstream_rerank_batch_pairs", "Pairs in one cross-encoder call.",
            buckets=PAIR_BUCKETS, registry=r,
        )  # fmt: skip
        self.rerank_batch_requests = Histogram(
            "rankstream_rerank_batch_requests",
            "Requests whose pairs shared one cross-encoder call.", buckets=PAIR_BUCKETS, registry=r,
        )  # fmt: skip
        self.rerank_batch_tokens = Histogram(
            "rankstream_rerank_batch_tokens",
            "Padded tokens (pairs x longest pair) in one cross-encoder call.",
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.rerank_padding_ratio = Histogram(
            "rankstream_rerank_padding_ratio",
            "Padded tokens / real tokens in one cross-encoder call (1.0 = no padding).",
            buckets=PADDING_BUCKETS, registry=r,
        )  # fmt: skip
        self.rerank_queued_pairs, self.rerank_inflight_pairs = (
            Gauge(name, text, registry=r)
            for name, text in (
                ("rankstream_rerank_queued_pairs", "Pairs the rerank worker has queued."),
                (
                    "rankstream_rerank_inflight_pairs",
                    "Pairs the rerank worker holds (queued or in the model); capped by "
                    "max_inflight_pairs.",
                ),
            )
        )
        self.rerank_real_tokens, self.rerank_padded_tokens = (
            Counter(name, text, registry=r)
            for name, text in (
                ("rankstream_rerank_real_tokens", "Tokens of the scored pairs, without padding."),
                ("rankstream_rerank_padded_tokens", "Tokens the model computed, padding included."),
            )
        )
        self.inflight_requests = Gauge(
            "rankstream_inflight_requests",
            "Requests a worker holds right now.",
            ["worker"],
            registry=r,
        )
        self.requests, self.deadline_misses = (
            Counter(name, text, labels, registry=r)
            for name, text, labels in (
                (
                    "rankstream_requests",
                    "Requests finished by a worker, by outcome (ok|forwarded|degraded|<error "
                    "code>).",
                    ["worker", "outcome"],
                ),
                (
                    "rankstream_deadline_misses",
                    "Requests whose deadline passed before they were scored, by what they got "
                    "back (degraded = retrieval order, expired = error).",
                    ["worker", "action"],
                ),
            )
        )
        self.dead_letters_dropped = Counter(
            "rankstream_dead_letters_dropped",
            "Dead letters the full dead-letter stream refused (dead_letters_max_bytes).",
            ["worker"],
            registry=r,
        )
        self.cache_requests = Counter(
            "rankstream_cache_requests",
            "Result-cache lookups by tier (exact|semantic) and outcome (hit|miss).",
            ["tier", "outcome"],
            registry=r,
        )
        self.cache_errors = Counter(
            "rankstream_cache_errors",
            "Result-cache reads and writes that failed (the bucket unreachable or missing), by "
            "operation (read|write); a failed read is served as a miss.",
            ["operation"],
            registry=r,
        )
        self.redeliveries_answered = Counter(
            "rankstream_redeliveries_answered",
            "Requests JetStream delivered again after their answer was published: "
            "acknowledged without being worked on again.",
            ["worker"],
            registry=r,
        )
        self.cache_writes, self.cache_evictions = (
            Counter(name, text, labels, registry=r)
            for name, text, labels in (
                ("rankstream_cache_writes", "Answers written to the result cache.", []),
                (
                    "rankstream_cache_evictions",
                    "Entries the semantic tier dropped, by reason (expired|deleted).",
                    ["reason"],
                ),
            )
        )
        self.cache_entries = Gauge(
            "rankstream_cache_entries", "Cached queries the semantic tier holds.", registry=r
        )
        self.retrieval_requests = Counter(
            "rankstream_retrieval_requests",
            "Searches by retrieval mode (dense|bm25|hybrid).",
            ["mode"],
            registry=r,
        )
        self.search_seconds = Histogram(
            "rankstream_search_seconds",
            "Time of each list a search ran (list=dense|bm25; hybrid runs both at once).",
            ["list"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rerank_depth = Histogram(
            "rankstream_rerank_depth",
            "Candidates the first rerank stage scored, by how the depth was set (fixed|auto).",
            ["policy"],
            buckets=(0, 1, 2, 5, 10, 15, 20, 30, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.rerank_over_budget, self.rerank_truncated_tokens, self.rerank_tokenized_docs = (
            Counter(name, text, registry=r)
            for name, text in (
                (
                    "rankstream_rerank_over_budget_docs",
                    "Candidates longer than their stage's document token budget.",
                ),
                (
                    "rankstream_rerank_truncated_tokens",
                    "Document tokens the budget left out of every pair (head: the tail).",
                ),
                (
                    "rankstream_rerank_tokenized_docs",
                    "Candidates the rerank worker tokenized itself (no usable ids stored).",
                ),
            )
        )
        self.rerank_lane_queued = Gauge(
            "rankstream_rerank_lane_queued_pairs",
            "Pairs queued for a model batch, by priority lane (interactive|standard|batch).",
            ["lane"],
            registry=r,
        )
        self.rerank_lane_wait = Histogram(
            "rankstream_rerank_lane_wait_seconds",
            "Time a request's pairs waited for and between batches, by priority lane.",
            ["lane"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.peak_rss_bytes = Gauge(
            "rankstream_process_peak_resident_memory_bytes",
            "The highest resident memory of this process seen so far (sampled every second "
            "by the health heartbeat, and at each scrape).",
            registry=r,
        )
        self._process = psutil.Process()
        self._peak_rss = 0
        self.peak_rss_bytes.set_function(self.sample_memory)

    def sample_memory(self) -> float:
        """Sample resident memory now; returns the highest sample so far, in bytes."""
        self._peak_rss = max(self._peak_rss, int(self._process.memory_info().rss))
        return float(self._peak_rss)

    def observe_timings(self, timings: StageTimings) -> None:
        for stage, milliseconds in timings.model_dump().items():
            if milliseconds > 0:
                self.stage_seconds.labels(stage=stage).observe(milliseconds / 1000.0)

    def observe_rerank_batch(self, stats: BatchStats, scorer: str = "ce") -> None:
        self.model_batch_seconds.labels(model=scorer).observe(stats.seconds)
        self.rerank_batch_pairs.observe(stats.items)
        self.rerank_batch_requests.observe(stats.requests)
        self.rerank_batch_tokens.observe(stats.padded_tokens)
        self.rerank_padding_ratio.observe(stats.padded_tokens / max(1, stats.real_tokens))
        self.rerank_real_tokens.inc(stats.real_tokens)
        self.rerank_padded_tokens.inc(stats.padded_tokens)

    def observe_embed_batch(self, stats: BatchStats) -> None:
        self.model_batch_seconds.labels(model="embedder").observe(stats.seconds)
