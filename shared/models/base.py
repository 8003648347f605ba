"""The small interfaces every model runtime implements. Runtimes are synchronous: callers
run them in a thread so the event loop never blocks on a forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from rankstream.errors import ModelError

Pair = tuple[str, str]
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class PairEncoding:
    """One (query, document) pair as a cross-encoder reads it: token ids and segment (type)
    ids, special tokens included, truncated, not padded. Its length is its cost in a batch."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)


class CrossEncoderBackend(Protocol):
    """Scores (query, document) pairs: one raw logit each, higher = more relevant.

    Pairs are encoded once (`encode`, where they are costed for batching) and scored from
    those encodings (`score`), so nothing is tokenized twice."""

    model_id: str
    max_length: int

    def encode(self, pairs: Sequence[Pair]) -> list[PairEncoding]:
        """Each pair tokenized and truncated to `max_length` tokens, in order."""
        ...

    def score(self, batch: Sequence[PairEncoding]) -> list[float]:
        """One score per encoding, in order. Raises ModelError on non-finite output."""
        ...


def score_pairs(model: CrossEncoderBackend, pairs: Sequence[Pair]) -> list[float]:
    """Encode and score in one call: for tools and tests that hold text, not encodings."""
    return model.score(model.encode(pairs))


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


def finite_scores(scores: npt.NDArray[np.floating], model_id: str) -> list[float]:
    """Refuse NaN/inf: a broken model must produce an error, not a silently wrong ranking."""
    if not np.all(np.isfinite(scores)):
        raise ModelError(f"model {model_id} returned non-finite scores")
    return [float(s) for s in scores]
