"""Small fake backends for the handler tier: no model, no store, deterministic answers.

- `WordEmbedder` maps a text to the normalised counts of its hashed words.
- `ListStore` searches a list of passages by the dot product of those vectors (dense), by
  shared words (bm25), or both fused, as `DocumentStore` does.
- `OverlapCrossEncoder` encodes a pair as hashed word ids and scores it by how many of the
  query's words the document holds, optionally sleeping per pair like a slow model.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Sequence

import numpy as np

from rankstream.errors import InvalidRequestError
from rankstream.models.base import Pair, PairEncoding, TokenIds, Vectors, normalise
from rankstream.planning.plan import Fusion
from rankstream.retrieval.fusion import SearchMode, fuse
from rankstream.retrieval.store import DEFAULT_FUSION, SearchHit, SearchResult
from rankstream.wire.filters import ParsedFilter

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


class WordCodec:
    """Pairs as `query ids, SEPARATOR, document ids`, cut to `max_length`."""

    fingerprint = "fake:words"
    max_length = 512

    def encode_query(self, query: str) -> TokenIds:
        ids = tuple(word_id(w) for w in words(query))
        if self.document_room(ids) < 1:
            raise InvalidRequestError("query too long for the fake model")
        return ids

    def encode_documents(self, documents: Sequence[str]) -> list[TokenIds]:
        return [tuple(word_id(w) for w in words(document)) for document in documents]

    def document_room(self, query: TokenIds) -> int:
        return self.max_length - len(query) - 1

    def join(self, query: TokenIds, document: TokenIds) -> PairEncoding:
        document = document[: self.document_room(query)]
        ids = (*query, SEPARATOR, *document)
        return PairEncoding(ids, (0,) * (len(query) + 1) + (1,) * len(document))

    def encode(self, pairs: Sequence[Pair]) -> list[PairEncoding]:
        return [self.join(self.encode_query(q), self.encode_documents([d])[0]) for q, d in pairs]


class ListStore:
    """`passages`: doc id -> text. Token ids are stored for every passage, as `rankstream
    index` does, in the fake model's vocabulary."""

    def __init__(self, passages: dict[str, str], table_version: int = 1) -> None:
        self.passages = passages
        self.table_version = table_version
        self._ids = list(passages)
        self._vectors = WordEmbedder().embed_documents(list(passages.values()))
        self._tokens = dict(
            zip(self._ids, WordCodec().encode_documents(list(passages.values())), strict=False)
        )

    async def version(self) -> int:
        return self.table_version

    async def search(
        self,
        query: str,
        vector: Vectors | None,
        limit: int,
        mode: SearchMode,
        where: ParsedFilter | None = None,
        fusion: Fusion = DEFAULT_FUSION,
    ) -> SearchResult:
        if where is not None:
            raise NotImplementedError("ListStore does not filter; the integration tests do")
        dense = self._dense(vector) if mode != SearchMode.BM25 else []
        bm25 = self._bm25(query) if mode != SearchMode.DENSE else []
        if mode == SearchMode.HYBRID:
            ranked = fuse(dense, bm25, fusion.method, fusion.dense_weight, fusion.bm25_weight)
        else:
            ranked = dense or bm25
        hits = [
            SearchHit(doc, self.passages[doc], score, self._tokens[doc])
            for doc, score in ranked[:limit]
        ]
        return SearchResult(
            hits=hits,
            mode=mode,
            dense_ms=0.1 if dense else 0.0,
            bm25_ms=0.1 if bm25 else 0.0,
            table_version=self.table_version,
            tokenizer=WordCodec.fingerprint,
            dense_scores=[score for _, score in dense[:limit]],
            bm25_scores=[score for _, score in bm25[:limit]],
            overlap_at_10=None,
        )

    def _dense(self, vector: Vectors | None) -> list[tuple[str, float]]:
        assert vector is not None
        scores = self._vectors @ np.asarray(vector, dtype=np.float32)
        order = sorted(range(len(self._ids)), key=lambda i: (-scores[i], i))
        return [(self._ids[i], float(scores[i])) for i in order]

    def _bm25(self, query: str) -> list[tuple[str, float]]:
        asked = set(words(query))
        shared = {doc: float(len(asked & set(words(text)))) for doc, text in self.passages.items()}
        return sorted(((d, s) for d, s in shared.items() if s > 0), key=lambda t: -t[1])


class OverlapCrossEncoder:
    model_id = "fake:overlap"
    max_length = 512

    def __init__(self, seconds_per_pair: float = 0.0) -> None:
        self.seconds_per_pair = seconds_per_pair
        self.batches: list[int] = []
        self.tokenizer = WordCodec()

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
