"""Settings, read from `RANKSTREAM_*` environment variables (CLI flags override them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EMBEDDED_NATS_PORT = 4222


class Settings(BaseSettings):
    """Everything a worker, the client or a CLI verb can be told.

    `nats_url=None` means "local": `rankstream up`/`demo` start an embedded nats-server on
    `embedded_nats_port`, and clients connect to it on loopback.
    """

    model_config = SettingsConfigDict(env_prefix="RANKSTREAM_", extra="ignore")

    # --- NATS ---
    nats_url: str | None = None
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    embedded_nats_port: int = DEFAULT_EMBEDDED_NATS_PORT
    subject_prefix: str = Field(default="rankstream", pattern=r"^[A-Za-z0-9_-]+$")

    # --- models ---
    # "packaged:<name>", a Hugging Face id, or a local path (see shared/models/registry.py).
    embedder_model: str = "packaged:all-MiniLM-L6-v2"
    reranker_model: str = "packaged:ms-marco-MiniLM-L-12-v2-int8"
    device: str = "cpu"
    dtype: str = Field(default="float32", pattern=r"^(float32|float16|bfloat16)$")
    max_length: int = Field(default=512, ge=16, le=8192)
    model_cache_dir: Path = Path.home() / ".cache" / "rankstream"

    # --- rerank micro-batching ---
    max_batch_pairs: int = Field(default=64, ge=1)
    # Padded tokens per batch. Small on CPU: with ~300-token pairs, batching more pairs per call
    # lowers int8 throughput on 2 cores (measured: 25 pairs/s alone, 10 in batches of 8).
    max_batch_tokens: int = Field(default=2048, ge=16)
    max_batch_wait_ms: float = Field(default=5.0, ge=0)
    max_inflight_requests: int = Field(default=64, ge=1)
    # Pairs a rerank worker holds at once (queued + in the model); past it, it stops pulling.
    max_inflight_pairs: int = Field(default=2048, ge=1)
    # How many of the oldest queued pairs are grouped by length (0 = 4 x max_batch_pairs).
    batch_sort_window: int = Field(default=0, ge=0)
    # What a request whose deadline passes before scoring gets: its retrieval order marked
    # `degraded`, or an `expired` error.
    on_deadline: Literal["degraded", "expired"] = "degraded"
    # How long an idle worker's JetStream fetch lingers before asking again.
    fetch_wait_ms: float = Field(default=20.0, gt=0)

    # --- retrieval ---
    max_embed_batch: int = Field(default=32, ge=1)
    max_embed_wait_ms: float = Field(default=2.0, ge=0)
    default_top_k: int = Field(default=10, ge=1)
    default_depth: int = Field(default=20, ge=0)
    max_depth: int = Field(default=1000, ge=1)
    default_timeout_ms: int = Field(default=30_000, ge=1)

    # --- LanceDB ---
    lancedb_uri: str = str(Path.home() / ".cache" / "rankstream" / "lancedb")
    table: str = "documents"
    ann_min_rows: int = Field(default=100_000, ge=1)

    # --- observability ---
    metrics_port: int = Field(default=9464, ge=0, le=65535)

    @property
    def effective_nats_url(self) -> str:
        return self.nats_url or f"nats://127.0.0.1:{self.embedded_nats_port}"
