"""Token embeddings for late interaction (ColBERT-style) on sentence-transformers'
`MultiVectorEncoder`: one small normalised vector per token; a document's are computed once
at index time, a query's at query time, and MaxSim (each query token's best cosine with any
document token, summed) scores the pair. Scoring lives with the stored vectors, in the store
(`rankstream.retrieval.token_store`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from sentence_transformers import MultiVectorEncoder

TokenVectors = npt.NDArray[np.float32]  # (tokens, dimension), rows of unit length


class TokenEmbedder:
    """A `MultiVectorEncoder` folder or Hugging Face id.

    Args:
        name_or_path: the model; `rankstream distill --student late-interaction` writes one.
        model_id: the name results and table names carry.
        device: `cpu`, `cuda`, ...
        local_files_only: never contact the hub.
    """

    def __init__(
        self, name_or_path: str, model_id: str, device: str = "cpu", local_files_only: bool = False
    ) -> None:
        self.model_id = model_id
        self._model = MultiVectorEncoder(
            name_or_path, device=device, local_files_only=local_files_only
        )
        self._model.eval()
        self.dimension = int(self.embed_query("probe").shape[1])
        self.fingerprint = weights_digest(Path(name_or_path), model_id)

    def embed_query(self, text: str) -> TokenVectors:
        with torch.inference_mode():
            (vectors,) = self._model.encode_query([text], convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32) -> list[TokenVectors]:
        if not texts:
            return []
        with torch.inference_mode():
            vectors = self._model.encode_document(
                list(texts), batch_size=batch_size, convert_to_numpy=True
            )
        return [np.asarray(v, dtype=np.float32) for v in vectors]


def weights_digest(path: Path, model_id: str) -> str:
    """Twelve hex digits that change when the model's weights do (a local folder), else its
    id: stored token vectors are only valid for the weights that made them."""
    digest = hashlib.sha256(model_id.encode())
    if path.is_dir():
        for file in sorted(path.rglob("*.safetensors")):
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]
