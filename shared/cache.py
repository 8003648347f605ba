"""The result cache for frequent queries: a NATS JetStream key-value bucket every replica
shares (no other store), with an optional semantic tier.

- **Key.** The normalised query (Unicode NFKC, case folded, punctuation dropped, white
  space collapsed) and everything that changes the answer: the table (the configured one or
  the one the request names) and its version, the request's metadata filter, the embedder,
  each stage's model, depth and budget, the retrieval mode and its fusion weights, `top_k`,
  the depth policy. A new table version (any re-index) gives new keys, so nothing cached
  before it is served after it; the old entries expire with the bucket's TTL.
- **Exact tier.** The retrieval worker looks the key up before any model runs; the worker
  that answers (rerank, or retrieval at depth 0) writes the answer. Degraded answers are
  never written.
- **Semantic tier** (`semantic_cache_threshold`). Each replica keeps the cached queries'
  embeddings in memory, fed by a watch on the bucket (so an answer one replica writes is
  found by all); a query embedded within the threshold's cosine of a cached query with the
  same context reuses its answer, before search and rerank.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nats
import numpy as np
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.models.base import Vectors
from rankstream.wire.connection import connect_kwargs
from rankstream.wire.messages import CachedAnswer, now_ms
from rankstream.wire.subjects import Subjects

log = logging.getLogger(__name__)

# Quotes around a word: the BM25 list reads words only (no phrase search), so they mark
# nothing the answer depends on. Apostrophes inside a word ("don't") stay.
QUOTES = "\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb"
# Punctuation that ends a clause or a sentence when it ends a word ("work?", "vaccines,").
CLAUSE_END = re.compile(r"[.,;:!?\u2026]+$")


def normalise_query(text: str) -> str:
    """What makes two queries the same question (the query's part of the cache key).

    Merged: Unicode compatibility forms (NFKC: full-width letters, ligatures), case
    (casefold), runs of white space, quotes around a word, and the punctuation that ends a
    clause or a sentence at the end of a word (`.` `,` `;` `:` `!` `?` `…`, so "work?" and
    "work ?!" are "work"): none of them changes the question.

    Kept: everything inside a word and at its start, since there it changes the meaning:
    "C++" is not "C", "C#" not "C", "-5" not "5", "3.14" not "3 14" (a decimal point is
    inside the word), "e-mail" not "e mail", "(a)" not "a". A query that is nothing but
    punctuation keeps its punctuation ("?" is not "!"). Two queries whose words differ
    (after the merging above) never share a key: a miss costs a search, a wrong merge
    serves another question's answer.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    words = [_bare_word(word) for word in folded.split()]
    kept = [word for word in words if word]
    return " ".join(kept) if kept else " ".join(folded.split())


def _bare_word(word: str) -> str:
    """A word without its surrounding quotes and its clause-ending punctuation."""
    previous = None
    while word != previous:  # '"work?"' and 'work?"' alike
        previous = word
        word = CLAUSE_END.sub("", word.strip(QUOTES))
    return word


def context_digest(context: dict[str, Any]) -> str:
    """A short name for everything besides the query that changes the answer."""
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def cache_key(normalised_query: str, context: str) -> str:
    query = hashlib.sha256(normalised_query.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{context}.{query}"


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
        """The answer cached under `key`, or None (a miss)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return self._miss("exact")
        answer = self._parse(entry.value)
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
        try:
            return self._parse((await self._kv.get(key)).value)
        except KeyNotFoundError:
            return None

    async def put(self, key: str, answer: CachedAnswer) -> None:
        """Store `answer`; a failure is logged, never raised (the answer was sent anyway)."""
        try:
            await self._kv.put(key, answer.model_dump_json().encode())
        except Exception as error:  # a full or unreachable bucket must not fail a request
            log.warning("could not cache an answer: %r", error)
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
