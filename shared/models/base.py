"""The small interfaces every model backend implements. Backends are synchronous: callers
run them in a thread so the event loop never blocks on a forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shared.errors import ModelError

Pair = tuple[str, str]
Vectors = npt.NDArray[np.float32]


class CrossEncoderBackend(Protocol):
    """Scores (query, document) pairs: one raw logit each, higher = more relevant."""

    model_id: str
    max_length: int

    def token_lengths(self, pairs: Sequence[Pair]) -> list[int]:
        """Tokens each pair occupies after truncation (no padding)."""
        ...

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        """One score per pair, in order. Raises ModelError on non-finite output."""
        ...


class Embedder(Protocol):
    """Maps texts to L2-normalised vectors (cosine = dot product)."""

    model_id: str
    dimension: int

    def embed_queries(self, texts: Sequence[str]) -> Vectors: ...

    def embed_documents(self, texts: Sequence[str], show_progress: bool = False) -> Vectors: ...


def finite_scores(scores: npt.NDArray[np.floating], model_id: str) -> list[float]:
    """Refuse NaN/inf: a broken model must produce an error, not a silently wrong ranking."""
    if not np.all(np.isfinite(scores)):
        raise ModelError(f"model {model_id} returned non-finite scores")
    return [float(s) for s in scores]
