"""Small fake backends for the handler tier: no model, no store, deterministic answers.

- `WordEmbedder` maps a text to the normalised counts of its hashed words.
- `ListStore` searches a list of passages by the dot product of those vectors.
- `OverlapCrossEncoder` encodes a pair as hashed word ids and scores it by how many of the
  query's words the document holds, optionally sleeping per pair like a slow model.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Sequence

import numpy as np

from rankstream.models import Pair, PairEncoding
from rankstream.models.base import Vectors, normalise
from rankstream.retrieval.store import SearchHit

DIMENSION = 64
SEPARATOR = 0


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_id(word: str) -> int:
    return zlib.crc32(word.encode()) % 30_000 + 1


class WordEmbedder:
    model_id = "fake:words"
    dimension = DIMENSION

    def __init__(self) -> None:
        self.calls = 0

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        return self._embed(texts)

    def embed_documents(self, texts: Sequence[str], show_progress: bool = False) -> Vectors:
        return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> Vectors:
        vectors = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in words(text):
                vectors[row, word_id(word) % DIMENSION] += 1.0
        return normalise(vectors)


class ListStore:
    """`passages`: doc id -> text."""

    def __init__(self, passages: dict[str, str]) -> None:
        self.passages = passages
        self._ids = list(passages)
        self._vectors = WordEmbedder().embed_documents(list(passages.values()))

    async def search(self, vector: Vectors, limit: int) -> list[SearchHit]:
        scores = self._vectors @ np.asarray(vector, dtype=np.float32)
        order = sorted(range(len(self._ids)), key=lambda i: (-scores[i], i))[:limit]
        return [
            SearchHit(self._ids[i], self.passages[self._ids[i]], float(scores[i])) for i in order
        ]


class OverlapCrossEncoder:
    model_id = "fake:overlap"
    max_length = 512

    def __init__(self, seconds_per_pair: float = 0.0) -> None:
        self.seconds_per_pair = seconds_per_pair
        self.batches: list[int] = []

    def encode(self, pairs: Sequence[Pair]) -> list[PairEncoding]:
        encoded = []
        for query, document in pairs:
            query_ids = [word_id(w) for w in words(query)]
            document_ids = [word_id(w) for w in words(document)]
            ids = (*query_ids, SEPARATOR, *document_ids)[: self.max_length]
            types = (0,) * (len(query_ids) + 1) + (1,) * len(document_ids)
            encoded.append(PairEncoding(ids, types[: len(ids)]))
        return encoded

    def score(self, batch: Sequence[PairEncoding]) -> list[float]:
        self.batches.append(len(batch))
        if self.seconds_per_pair:
            time.sleep(self.seconds_per_pair * len(batch))
        scores = []
        for encoding in batch:
            split = encoding.ids.index(SEPARATOR)
            query, document = set(encoding.ids[:split]), set(encoding.ids[split + 1 :])
            scores.append(float(len(query & document)))
        return scores
