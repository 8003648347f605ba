"""Model runtimes behind two small protocols; `registry` picks and loads them.

One module per runtime is the only importer of its library: `onnx_*` of onnxruntime,
`torch_*` of torch and sentence-transformers; `dequantize` exports the packaged int8
reranker as an fp32 checkpoint.
"""

from rankstream.models.base import (
    CrossEncoderBackend,
    Embedder,
    Pair,
    PairEncoding,
    score_pairs,
)
from rankstream.models.registry import load_cross_encoder, load_embedder

__all__ = [
    "CrossEncoderBackend",
    "Embedder",
    "Pair",
    "PairEncoding",
    "load_cross_encoder",
    "load_embedder",
    "score_pairs",
]
