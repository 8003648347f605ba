"""Bi-encoder on sentence-transformers: queries and documents to normalised vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sentence_transformers import SentenceTransformer

from rankstream.models.base import Vectors


class SentenceTransformerEmbedder:
    def __init__(
        self,
        name_or_path: str,
        model_id: str,
        device: str = "cpu",
        local_files_only: bool = False,
        batch_size: int = 64,
    ) -> None:
        self.model_id = model_id
        self._batch_size = batch_size
        self._model = SentenceTransformer(
            name_or_path, device=device, local_files_only=local_files_only
        )
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"{model_id} does not declare an embedding dimension")
        self.dimension = int(dimension)

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self._encode(texts, show_progress=False)

    def embed_documents(self, texts: Sequence[str], show_progress: bool = False) -> Vectors:
        return self._encode(texts, show_progress=show_progress)

    def _encode(self, texts: Sequence[str], show_progress: bool) -> Vectors:
        vectors = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)
