"""Cross-encoder on onnxruntime + tokenizers (the packaged int8 ms-marco-MiniLM-L-12-v2).

Dynamic int8 quantization picks one activation scale per tensor, i.e. per batch, so this
backend's scores move slightly with batch composition. Use the fp32 export
(`packaged:ms-marco-MiniLM-L-12-v2-fp32`) where scores must not depend on batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from shared.errors import ModelError
from shared.models.base import Pair, finite_scores


class OnnxCrossEncoder:
    def __init__(
        self, model_dir: Path, model_id: str, max_length: int = 512, threads: int = 0
    ) -> None:
        model_path, tokenizer_path = model_dir / "model.onnx", model_dir / "tokenizer.json"
        if not model_path.is_file() or not tokenizer_path.is_file():
            raise ModelError(f"{model_dir} needs model.onnx and tokenizer.json")
        self.model_id = model_id
        self.max_length = max_length
        self._padded = Tokenizer.from_file(str(tokenizer_path))
        # The shipped tokenizer.json pads every input to 512: pad to the batch's longest.
        self._padded.enable_padding(pad_id=0, pad_token="[PAD]")
        self._padded.enable_truncation(max_length=max_length)
        self._unpadded = Tokenizer.from_str(self._padded.to_str())
        self._unpadded.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}

    def token_lengths(self, pairs: Sequence[Pair]) -> list[int]:
        return [len(e.ids) for e in self._unpadded.encode_batch(list(pairs))]

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        if not pairs:
            return []
        encodings = self._padded.encode_batch(list(pairs))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        feeds = {name: value for name, value in feeds.items() if name in self._input_names}
        (logits,) = self._session.run(None, feeds)[:1]
        return finite_scores(np.asarray(logits).reshape(len(pairs), -1)[:, 0], self.model_id)
