"""Bi-encoder on onnxruntime + tokenizers: a sentence-transformers model (BERT, mean pooling,
normalised) exported once to ONNX, or an ONNX BERT shipped as is (a `config.json` beside
`model.onnx` and `tokenizer.json`, e.g. bge-small-en-v1.5: CLS pooling and a query prefix).

Why: on CPU, sentence-transformers on torch spends much of a query's CPU time in a thread
pool that spins between queries; this runtime gives the same vectors (checked to 1e-5 by the
tests) in a fraction of the time, with a thread pool that sleeps between queries, so it does
not steal the cores the cross-encoder is using on the same machine (figures: README).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from rankstream.errors import ModelError
from rankstream.models.base import Vectors, normalise
from rankstream.models.onnx_export import export_bert
from rankstream.models.staging import staged_dir

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
EXPORT_INFO_FILE = "rankstream_export.json"  # written last: its presence means complete
CONFIG_FILE = "config.json"  # a Hugging Face model's: hidden_size, max_position_embeddings
DOCUMENT_BATCH = 64
Pooling = Literal["mean", "cls"]


class OnnxEmbedder:
    """A BERT bi-encoder on onnxruntime.

    Args:
        model_dir: `model.onnx` (output `last_hidden_state`) and `tokenizer.json`, with
            either `rankstream_export.json` (written by `export_onnx_embedder`) or the
            model's `config.json`, which give the vector size and the longest input.
        model_id: the name results report.
        threads: onnxruntime's intra-op threads (0: its default, one a core).
        pooling: `mean` over the tokens or the `cls` token's vector; either is normalised.
        query_prefix: put before every query, never before a document (bge's instruction).

    Raises ModelError when a file is missing.
    """

    def __init__(
        self,
        model_dir: Path,
        model_id: str,
        threads: int = 0,
        pooling: Pooling = "mean",
        query_prefix: str = "",
    ) -> None:
        dimension, max_length = _model_shape(model_dir)
        self.model_id = model_id
        self.dimension = dimension
        self._pooling, self._query_prefix = pooling, query_prefix
        self._tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Queries arrive one at a time: let idle threads sleep rather than spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model_dir / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self._embed_batch([self._query_prefix + text for text in texts])

    def embed_documents(self, texts: Sequence[str], show_progress: bool = False) -> Vectors:
        """Batches of similar length (little padding), returned in the order given."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), DOCUMENT_BATCH):
            chunk = order[start : start + DOCUMENT_BATCH]
            vectors[chunk] = self._embed_batch([texts[i] for i in chunk])
        return vectors

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self._session.run(None, feeds)
        states = np.asarray(hidden, dtype=np.float32)
        return normalise(states[:, 0] if self._pooling == "cls" else _mean_pool(states, mask))


def _mean_pool(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> Vectors:
    weights = mask[..., None].astype(np.float32)
    pooled: Vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled


def _model_shape(model_dir: Path) -> tuple[int, int]:
    """(vector size, longest input in tokens) of the model in `model_dir`."""
    if not all((model_dir / name).is_file() for name in (ONNX_FILE, TOKENIZER_FILE)):
        raise ModelError(
            f"{model_dir} is not a complete ONNX bi-encoder (no {ONNX_FILE} or {TOKENIZER_FILE})"
        )
    if onnx_export_is_complete(model_dir):
        info = json.loads((model_dir / EXPORT_INFO_FILE).read_text(encoding="utf-8"))
        return int(info["dimension"]), int(info["max_length"])
    if (model_dir / CONFIG_FILE).is_file():
        config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        return int(config["hidden_size"]), int(config["max_position_embeddings"])
    raise ModelError(f"{model_dir} is not a complete ONNX bi-encoder (no {CONFIG_FILE})")


def onnx_export_is_complete(model_dir: Path) -> bool:
    return all(
        (model_dir / name).is_file() for name in (ONNX_FILE, TOKENIZER_FILE, EXPORT_INFO_FILE)
    )


def export_onnx_embedder(st_dir: Path, out_dir: Path) -> Path:
    """Export the transformer of the sentence-transformers model in `st_dir` (mean pooling,
    normalised: checked) to `out_dir`. Needs torch and transformers,
    imported here only."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_dir), device="cpu", local_files_only=True)
    _check_mean_pooled(model)
    transformer = model[0].auto_model
    assert isinstance(transformer, torch.nn.Module)
    transformer.eval()
    sample = model.tokenizer(["an example sentence"], return_tensors="pt")
    with staged_dir(out_dir) as tmp:
        export_bert(transformer, sample, tmp / ONNX_FILE, "last_hidden_state", True)
        (tmp / TOKENIZER_FILE).write_text(model.tokenizer.backend_tokenizer.to_str(), "utf-8")
        info = {"dimension": model.get_embedding_dimension(), "max_length": model.max_seq_length}
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps(info), encoding="utf-8")
    return out_dir


def _check_mean_pooled(model: SentenceTransformer) -> None:
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    modules = list(model)
    pooling = [m for m in modules if isinstance(m, Pooling)]
    normalised = any(isinstance(m, Normalize) for m in modules)
    if len(pooling) != 1 or pooling[0].pooling_mode != "mean" or not normalised:
        raise ModelError("the ONNX export supports mean-pooled, normalised models only")
