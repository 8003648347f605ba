"""The result cache's store: a NATS JetStream key-value bucket every replica shares (no
other store), with an optional semantic tier. Keys come from the plan (`rankstream.cache.keys`).

- **Exact tier.** The retrieval worker looks the plan's key up before any model runs; the
  worker that answers (rerank, or retrieval when nothing is reranked) writes the answer with
  `remember`, the one write path, before sending it (a repeat sent the moment the answer
  arrives is a hit). Degraded answers are never written; old entries expire with the
  bucket's TTL. A bucket that cannot be read or written (a key-value leader election, a
  missing bucket) is logged and counted (`rankstream_cache_errors_total`), a read as a miss:
  the cache never fails a request.
- **Semantic tier** (`semantic_cache_threshold`). Each replica keeps the cached queries'
  embeddings in memory, fed by a watch on the bucket (so an answer one replica writes is
  found by all); a query embedded within the threshold's cosine of a cached query with the
  same context reuses its answer, before search and rerank.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats
import numpy as np
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import Field, ValidationError

from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.models.base import Vectors
from rankstream.planning.plan import CacheKey
from rankstream.wire.connection import connect_kwargs
from rankstream.wire.contract import (
    RankedDoc,
    RankedResult,
    RetrievalReport,
    StageReport,
    StageTimings,
    WireModel,
    now_ms,
)
from rankstream.wire.subjects import Subjects

log = logging.getLogger(__name__)


# What a cached answer keeps of a ranked result (the rest belongs to the request it answered).
KEPT_FIELDS = ("results", "reranked", "model_id", "embedder_model", "stages", "retrieval")


class CachedAnswer(WireModel):
    """An answer as the result cache keeps it (this module): what a hit replays."""

    query: str = Field(description="The normalised query.")
    context: str = Field(description="Digest of everything besides the query it depends on.")
    results: list[RankedDoc]
    reranked: int = Field(ge=0)
    model_id: str
    embedder_model: str
    stages: list[StageReport] = Field(default_factory=list)
    retrieval: RetrievalReport = Field(default_factory=RetrievalReport)
    query_vector: list[float] | None = Field(
        default=None, description="The query's embedding, for the semantic tier."
    )
    cached_at_ms: float = Field(default_factory=now_ms)

    @classmethod
    def of(
        cls, key: CacheKey, result: RankedResult, query_vector: list[float] | None
    ) -> CachedAnswer:
        """`result` as the cache keeps it under `key`."""
        kept = {name: getattr(result, name) for name in KEPT_FIELDS}
        return cls(query=key.query, context=key.context, query_vector=query_vector, **kept)

    def as_result(
        self, request_id: str, query: str, timings: StageTimings, profile: str | None
    ) -> RankedResult:
        """The answer replayed for a request that hit it; `profile` is the digest of the
        profile that planned the request (part of the key, so the one the answer was made
        under)."""
        kept = {name: getattr(self, name) for name in KEPT_FIELDS}
        return RankedResult(
            request_id=request_id, query=query, timings_ms=timings, batch_pairs=0,
            batch_requests=0, cached=True, profile=profile, **kept,
        )  # fmt: skip


@dataclass
class _SemanticIndex:
    """The cached queries' embeddings, by context."""

    vectors: dict[str, dict[str, Vectors]] = field(default_factory=dict)

    def add(self, key: str, context: str, vector: Vectors) -> None:
        self.vectors.setdefault(context, {})[key] = vector

    def remove(self, key: str) -> bool:
        context = key.split(".", 1)[0]
        return self.vectors.get(context, {}).pop(key, None) is not None

    def nearest(self, context: str, vector: Vectors) -> tuple[str, float] | None:
        entries = self.vectors.get(context)
        if not entries:
            return None
        keys = list(entries)
        similarities = np.stack([entries[k] for k in keys]) @ vector
        best = int(np.argmax(similarities))
        return keys[best], float(similarities[best])

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.vectors.values())


class ResultCache:
    """Args:
    kv: the bucket (see `open_cache`).
    metrics: hits, misses, entries and evictions are counted here.
    semantic_threshold: cosine at or above which a cached query's answer is reused;
        None: exact hits only.
    ttl_s: how long an entry lives (the bucket's TTL; entries older are dropped from the
        semantic tier too).
    """

    def __init__(
        self,
        kv: KeyValue,
        metrics: Metrics,
        semantic_threshold: float | None,
        ttl_s: float,
    ) -> None:
        self._kv, self._metrics = kv, metrics
        self._threshold, self._ttl_s = semantic_threshold, ttl_s
        self._index = _SemanticIndex()
        self._cached_at: dict[str, float] = {}
        self._watcher: asyncio.Task[None] | None = None

    @property
    def semantic(self) -> bool:
        return self._threshold is not None

    async def start(self) -> None:
        """Start feeding the semantic tier from the bucket (nothing to do without it)."""
        if self.semantic and self._watcher is None:
            watcher = await self._kv.watchall()
            self._watcher = asyncio.create_task(self._follow(watcher), name="cache-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer cached under `key`, or None (a miss; a bucket that cannot be read is
        one too, logged and counted in `rankstream_cache_errors_total`)."""
        answer = await self.get_quietly(key)
        if answer is None:
            return self._miss("exact")
        self._metrics.cache_requests.labels(tier="exact", outcome="hit").inc()
        return answer

    async def nearest(self, context: str, vector: Vectors) -> CachedAnswer | None:
        """The answer of the cached query nearest `vector` in `context`, if within the
        threshold (a semantic hit), else None."""
        if self._threshold is None:
            return None
        self._expire()
        found = self._index.nearest(context, np.asarray(vector, dtype=np.float32))
        if found is None or found[1] < self._threshold:
            return self._miss("semantic")
        answer = await self.get_quietly(found[0])
        if answer is None:
            return self._miss("semantic")
        self._metrics.cache_requests.labels(tier="semantic", outcome="hit").inc()
        return answer

    async def get_quietly(self, key: str) -> CachedAnswer | None:
        """The answer cached under `key`, or None, without counting a hit or a miss. A read
        that fails (a timeout during a key-value leader election, a missing bucket) is
        logged and counted, and returns None: a cache must never fail a request."""
        try:
            return self._parse((await self._kv.get(key)).value)
        except KeyNotFoundError:
            return None
        except (TimeoutError, nats.errors.Error) as error:
            log.warning("could not read the result cache, serving a miss: %r", error)
            self._metrics.cache_errors.labels(operation="read").inc()
            return None

    async def remember(
        self, key: CacheKey, result: RankedResult, query_vector: list[float] | None = None
    ) -> None:
        """Store `result` under `key` (with the query's embedding, for the semantic tier);
        a degraded result is never stored. A failure is logged, never raised: the answer is
        still sent."""
        if result.degraded:
            return
        answer = CachedAnswer.of(key, result, query_vector)
        try:
            await self._kv.put(key.key, answer.model_dump_json().encode())
        except Exception as error:  # a full or unreachable bucket must not fail a request
            log.warning("could not cache an answer: %r", error)
            self._metrics.cache_errors.labels(operation="write").inc()
            return
        self._metrics.cache_writes.inc()

    def _miss(self, tier: str) -> CachedAnswer | None:
        """Count a miss; returns None, what a lookup that missed returns."""
        self._metrics.cache_requests.labels(tier=tier, outcome="miss").inc()
        return None

    def _parse(self, value: bytes | None) -> CachedAnswer | None:
        try:
            return CachedAnswer.model_validate_json(value or b"")
        except ValidationError:
            return None

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the watcher has caught up with the bucket
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                if self._index.remove(entry.key):
                    self._cached_at.pop(entry.key, None)
                    reason = "expired" if entry.operation == KV_PURGE else "deleted"
                    self._metrics.cache_evictions.labels(reason=reason).inc()
            else:
                self._remember(entry.key, entry.value)
            self._metrics.cache_entries.set(len(self._index))

    def _remember(self, key: str, value: bytes | None) -> None:
        answer = self._parse(value)
        if answer is None or answer.query_vector is None:
            return
        vector = np.asarray(answer.query_vector, dtype=np.float32)
        self._index.add(key, answer.context, vector)
        self._cached_at[key] = answer.cached_at_ms

    def _expire(self) -> None:
        """Drop semantic entries past the TTL (the bucket drops them too)."""
        oldest = now_ms() - self._ttl_s * 1000
        for key in [k for k, at in self._cached_at.items() if at < oldest]:
            self._cached_at.pop(key)
            if self._index.remove(key):
                self._metrics.cache_evictions.labels(reason="expired").inc()
        self._metrics.cache_entries.set(len(self._index))


@asynccontextmanager
async def result_cache(settings: Settings, metrics: Metrics) -> AsyncIterator[ResultCache | None]:
    """The cache in the bucket `ensure_streams` created (`{PREFIX}_CACHE`), over a NATS
    connection of its own, watching the bucket when the semantic tier is on; None when
    `cache_ttl_s` is 0 (off)."""
    if settings.cache_ttl_s <= 0:
        yield None
        return
    connection = await nats.connect(**connect_kwargs(settings), max_reconnect_attempts=-1)
    try:
        kv = await connection.jetstream().key_value(Subjects.from_settings(settings).cache_bucket)
        cache = ResultCache(kv, metrics, settings.semantic_cache_threshold, settings.cache_ttl_s)
        await cache.start()
        try:
            yield cache
        finally:
            await cache.stop()
    finally:
        await connection.close()
