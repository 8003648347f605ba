"""Cross-encoder on sentence-transformers `CrossEncoder` (torch): CPU or CUDA, fp16/bf16 on GPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sentence_transformers import CrossEncoder

from rankstream.models.base import PairEncoding
from rankstream.models.tokenization import PairTokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchCrossEncoder:
    """A sentence-transformers / Hugging Face cross-encoder checkpoint with one output label.

    Args:
        name_or_path: a local folder or a Hugging Face id (the hub must be reachable unless
            `local_files_only`).
        model_id: the name results report.
        device: `cpu`, `cuda`, `cuda:1`, ...
        dtype: `float32`, `float16` or `bfloat16` (the half types are for GPUs).
        max_length: tokens per pair after truncation.
        local_files_only: never contact the hub.
    """

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
            local_files_only=local_files_only,
            model_kwargs={"dtype": DTYPES[dtype]},
        )
        self._model.eval()
        hf_tokenizer = self._model.tokenizer
        self.tokenizer = PairTokenizer(
            hf_tokenizer.backend_tokenizer, max_length, pad_id=hf_tokenizer.pad_token_id or 0
        )

    def score(self, batch: Sequence[PairEncoding]) -> list[float]:
        if not batch:
            return []
        device = self._model.device
        features = {
            name: torch.from_numpy(array).to(device)
            for name, array in self.tokenizer.pad(batch).as_dict().items()
        }
        with torch.inference_mode():
            # Raw logits, as the ONNX runtime returns: rank by score, never by a sigmoid cut.
            logits = self._model(features)["scores"]
        scores: list[float] = logits.float().reshape(len(batch), -1)[:, 0].cpu().tolist()
        return scores
