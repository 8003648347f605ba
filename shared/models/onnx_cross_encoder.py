"""Cross-encoder on onnxruntime + tokenizers (the packaged int8 ms-marco-MiniLM-L-12-v2).

Dynamic int8 quantization picks one activation scale per tensor, i.e. per batch, so this
runtime's scores move slightly with batch composition. Use the fp32 export
(`packaged:ms-marco-MiniLM-L-12-v2-fp32`) where scores must not depend on batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from rankstream.errors import ModelError
from rankstream.models.base import PairEncoding
from rankstream.models.onnx_export import export_bert
from rankstream.models.staging import staged_dir
from rankstream.models.tokenization import PairTokenizer


class OnnxCrossEncoder:
    """A folder holding `model.onnx` (inputs `input_ids`, `attention_mask` and optionally
    `token_type_ids`; one logit per pair) and its `tokenizer.json`.

    Args:
        model_dir: that folder. Raises ModelError when either file is missing.
        model_id: the name results report (`RankedResult.model_id`).
        max_length: tokens per pair after truncation.
        threads: onnxruntime intra-op threads; 0 lets onnxruntime choose (one per core).
    """

    def __init__(
        self, model_dir: Path, model_id: str, max_length: int = 512, threads: int = 0
    ) -> None:
        model_path, tokenizer_path = model_dir / "model.onnx", model_dir / "tokenizer.json"
        if not model_path.is_file() or not tokenizer_path.is_file():
            raise ModelError(f"{model_dir} needs model.onnx and tokenizer.json")
        self.model_id = model_id
        self.max_length = max_length
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The shipped tokenizer.json pads every input to 512; PairTokenizer pads per batch.
        pad_id = (tokenizer.padding or {}).get("pad_id", 0)
        self.tokenizer = PairTokenizer(tokenizer, max_length, pad_id=pad_id)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}

    def score(self, batch: Sequence[PairEncoding]) -> list[float]:
        if not batch:
            return []
        feeds = {
            name: value
            for name, value in self.tokenizer.pad(batch).as_dict().items()
            if name in self._input_names
        }
        (logits,) = self._session.run(None, feeds)[:1]
        return [float(s) for s in np.asarray(logits).reshape(len(batch), -1)[:, 0]]


INT8_SUBFOLDER = "onnx-int8"


def export_int8_cross_encoder(checkpoint_dir: Path, out_dir: Path) -> Path:
    """Export the sentence-transformers / Hugging Face cross-encoder in `checkpoint_dir` to
    `out_dir` as `model.onnx` (weights dynamically quantized to int8 per channel) and
    `tokenizer.json`: a folder `OnnxCrossEncoder` serves on CPU. Needs
    torch and transformers, imported here only; `out_dir` is either complete or absent."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(checkpoint_dir), device="cpu", local_files_only=True)
    classifier = model[0].auto_model
    assert isinstance(classifier, torch.nn.Module)
    classifier.eval()
    sample = model.tokenizer([("a query", "a document")], return_tensors="pt")
    with staged_dir(out_dir) as tmp:
        export_bert(classifier, sample, tmp / "fp32.onnx", "logits", False)
        # Per channel (a scale per output column): a trimmed, retrained student's columns
        # differ widely in range, and one scale per tensor cost it its ranking (README,
        # "Smaller models").
        quantize_dynamic(
            tmp / "fp32.onnx", tmp / "model.onnx", weight_type=QuantType.QInt8, per_channel=True
        )
        (tmp / "fp32.onnx").unlink()
        (tmp / "tokenizer.json").write_text(model.tokenizer.backend_tokenizer.to_str(), "utf-8")
    return out_dir
