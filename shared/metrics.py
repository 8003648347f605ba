"""Every Prometheus metric rankstream exports, declared in one place."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.batching import BatchStats
from shared.messages import StageTimings

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25,
    0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
PAIR_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
TOKEN_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

STAGE_SECONDS = Histogram(
    "rankstream_stage_seconds",
    "Time a request spent in each stage (stage=queue_wait|embed|search|rerank_queue_wait|"
    "batch_wait|inference|total).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
MODEL_BATCH_SECONDS = Histogram(
    "rankstream_model_batch_seconds",
    "Wall time of one model call (model=embedder|reranker).",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
RERANK_BATCH_PAIRS = Histogram(
    "rankstream_rerank_batch_pairs",
    "Pairs in one cross-encoder call.",
    buckets=PAIR_BUCKETS,
)
RERANK_BATCH_REQUESTS = Histogram(
    "rankstream_rerank_batch_requests",
    "Requests whose pairs shared one cross-encoder call.",
    buckets=PAIR_BUCKETS,
)
RERANK_BATCH_TOKENS = Histogram(
    "rankstream_rerank_batch_tokens",
    "Padded tokens (pairs x longest pair) in one cross-encoder call.",
    buckets=TOKEN_BUCKETS,
)
RERANK_PADDING_RATIO = Histogram(
    "rankstream_rerank_padding_ratio",
    "Padded tokens / real tokens in one cross-encoder call (1.0 = no padding).",
    buckets=(1.0, 1.02, 1.05, 1.1, 1.15, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0),
)
RERANK_QUEUED_PAIRS = Gauge(
    "rankstream_rerank_queued_pairs", "Pairs waiting in the rerank worker for a model batch."
)
RERANK_INFLIGHT_PAIRS = Gauge(
    "rankstream_rerank_inflight_pairs",
    "Pairs the rerank worker holds (queued or in the model); capped by max_inflight_pairs.",
)
RERANK_REAL_TOKENS = Counter(
    "rankstream_rerank_real_tokens_total", "Tokens of the scored pairs, without padding."
)
RERANK_PADDED_TOKENS = Counter(
    "rankstream_rerank_padded_tokens_total", "Tokens the model computed, padding included."
)
INFLIGHT_REQUESTS = Gauge(
    "rankstream_inflight_requests", "Requests a worker holds right now.", ["worker"]
)
REQUESTS = Counter(
    "rankstream_requests_total",
    "Requests finished by a worker, by outcome (ok|forwarded|degraded|<error code>).",
    ["worker", "outcome"],
)
DEADLINE_MISSES = Counter(
    "rankstream_deadline_misses_total",
    "Requests whose deadline passed before they were scored, by what they got back "
    "(degraded = retrieval order, expired = error).",
    ["worker", "action"],
)


def observe_timings(timings: StageTimings) -> None:
    for stage, milliseconds in timings.model_dump().items():
        if milliseconds > 0:
            STAGE_SECONDS.labels(stage=stage).observe(milliseconds / 1000.0)


def observe_rerank_batch(stats: BatchStats) -> None:
    MODEL_BATCH_SECONDS.labels(model="reranker").observe(stats.seconds)
    RERANK_BATCH_PAIRS.observe(stats.items)
    RERANK_BATCH_REQUESTS.observe(stats.requests)
    RERANK_BATCH_TOKENS.observe(stats.padded_tokens)
    RERANK_PADDING_RATIO.observe(stats.padded_tokens / max(1, stats.real_tokens))
    RERANK_REAL_TOKENS.inc(stats.real_tokens)
    RERANK_PADDED_TOKENS.inc(stats.padded_tokens)


def observe_embed_batch(stats: BatchStats) -> None:
    MODEL_BATCH_SECONDS.labels(model="embedder").observe(stats.seconds)
