"""The gateway's own Prometheus metrics, on its own registry (rankstream.metrics' buckets and
naming), served at its `/metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from rankstream.metrics import LATENCY_BUCKETS, PAIR_BUCKETS, process_registry


class GatewayMetrics:
    """Requests by route and status, their latency, and documents per rerank request.

    Args:
        registry: where they are registered (default: a new `process_registry()`).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = process_registry() if registry is None else registry
        r = self.registry
        self.requests = Counter(
            "rankstream_gateway_requests_total",
            "HTTP requests the gateway answered (route=/v2/rerank|/v1/rerank|/rerank|"
            "/v1/search|other, status=HTTP status).",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.seconds = Histogram(
            "rankstream_gateway_request_seconds",
            "Time from request received to response sent, per route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.documents = Histogram(
            "rankstream_gateway_documents",
            "Documents per rerank request, per route.",
            ["route"], buckets=PAIR_BUCKETS, registry=r,
        )  # fmt: skip
