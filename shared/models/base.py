"""The small interfaces every model runtime implements, and the types that cross module
boundaries. A leaf: it imports numpy and nothing of a runtime (no tokenizers, onnxruntime or
torch), so scheduling and the store can name these types for free. Runtimes are synchronous:
callers run them in a thread (a model runner) so the event loop never blocks on a forward
pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from rankstream.errors import ModelError

Pair = tuple[str, str]
TokenIds = tuple[int, ...]
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class PairEncoding:
    """One (query, document) pair as a cross-encoder reads it: token ids and segment (type)
    ids, special tokens included, truncated, not padded. Its length is its cost in a batch."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)


class DocumentTokenizer(Protocol):
    """Tokenizes documents for a cross-encoder, at index time or in the rerank worker."""

    @property
    def fingerprint(self) -> str:
        """Names the vocabulary and rules: stored ids are used only where it matches."""
        ...

    def encode_documents(self, documents: Sequence[str]) -> list[TokenIds]:
        """Each document's ids, without special tokens, whole."""
        ...


class PairCodec(DocumentTokenizer, Protocol):
    """Builds the pairs a cross-encoder reads from a query's and documents' ids."""

    @property
    def max_length(self) -> int: ...

    def encode_query(self, query: str) -> TokenIds:
        """The query's ids, never truncated. Raises InvalidRequestError when it leaves a
        document too little room."""
        ...

    def document_room(self, query: TokenIds) -> int:
        """Tokens a document may have beside `query`."""
        ...

    def join(self, query: TokenIds, document: TokenIds) -> PairEncoding:
        """The pair with its special tokens; the document cut to the room the query leaves."""
        ...

    def encode(self, pairs: Sequence[Pair]) -> list[PairEncoding]:
        """Pairs from text: `join(encode_query(q), encode_documents([d]))` for each."""
        ...


class CrossEncoderBackend(Protocol):
    """Scores (query, document) pairs: one raw logit each, higher = more relevant.

    Pairs are encoded once by `tokenizer` (where they are costed for batching) and scored
    from those encodings (`score`), so nothing is tokenized twice."""

    model_id: str
    max_length: int

    @property
    def tokenizer(self) -> PairCodec: ...

    def score(self, batch: Sequence[PairEncoding]) -> list[float]:
        """One score per encoding, in order. A non-finite score (NaN, inf) is returned as it
        is: a batch mixes requests, and only the request that owns the pair must fail
        (`finite_scores` where its scores are read)."""
        ...


def score_pairs(model: CrossEncoderBackend, pairs: Sequence[Pair]) -> list[float]:
    """Encode and score in one call: for tools and tests that hold text, not encodings.

    Raises:
        ModelError: the model returned a non-finite score.
    """
    return finite_scores(model.score(model.tokenizer.encode(pairs)), model.model_id)


class Embedder(Protocol):
    """Maps texts to L2-normalised vectors (cosine = dot product)."""

    model_id: str
    dimension: int

    def embed_queries(self, texts: Sequence[str]) -> Vectors: ...

    def embed_documents(self, texts: Sequence[str], show_progress: bool = False) -> Vectors: ...


def normalise(vectors: Vectors) -> Vectors:
    """Each row scaled to unit length (an all-zero row stays zero), as float32."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalised: Vectors = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
    return normalised


def finite_scores(scores: Sequence[float], model_id: str) -> list[float]:
    """One request's scores, refusing NaN/inf: a broken model must produce an error, not a
    silently wrong ranking.

    Raises:
        ModelError: a score is not finite (the input that produced it fails again: do not
            retry it).
    """
    if not np.all(np.isfinite(np.asarray(scores, dtype=np.float64))):
        raise ModelError(f"model {model_id} returned non-finite scores")
    return [float(s) for s in scores]
