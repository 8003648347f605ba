"""Cross-encoder on sentence-transformers `CrossEncoder` (torch): CPU or CUDA, fp16/bf16 on GPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sentence_transformers import CrossEncoder

from shared.models.base import Pair, finite_scores

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchCrossEncoder:
    def __init__(
        self,
        name_or_path: str,
        model_id: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_length: int = 512,
        local_files_only: bool = False,
    ) -> None:
        self.model_id = model_id
        self.max_length = max_length
        self._model = CrossEncoder(
            name_or_path,
            device=device,
            max_length=max_length,
            # Raw logits, as the ONNX backend returns: rank by score, never by a sigmoid cut.
            activation_fn=torch.nn.Identity(),
            local_files_only=local_files_only,
            model_kwargs={"dtype": DTYPES[dtype]},
        )

    def token_lengths(self, pairs: Sequence[Pair]) -> list[int]:
        if not pairs:
            return []
        queries, documents = zip(*pairs, strict=True)
        encoded = self._model.tokenizer(
            list(queries), list(documents), truncation=True, max_length=self.max_length
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        if not pairs:
            return []
        scores = self._model.predict(
            [list(pair) for pair in pairs], batch_size=len(pairs), convert_to_numpy=True
        )
        return finite_scores(scores.astype("float64").reshape(-1), self.model_id)
