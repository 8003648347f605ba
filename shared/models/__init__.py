"""Model runtimes behind two small protocols; `registry` picks and loads them.

One module per runtime is the only importer of its library: `onnx_*` of onnxruntime,
`torch_*` of torch and sentence-transformers; `dequantize` exports the packaged int8
reranker as an fp32 checkpoint.
"""

from rankstream.models.base import (
    CrossEncoderBackend,
    DocumentTokenizer,
    Embedder,
    Pair,
    PairCodec,
    PairEncoding,
    TokenIds,
    score_pairs,
)
from rankstream.models.registry import load_cross_encoder, load_embedder

__all__ = [
    "CrossEncoderBackend",
    "DocumentTokenizer",
    "Embedder",
    "Pair",
    "PairCodec",
    "PairEncoding",
    "TokenIds",
    "load_cross_encoder",
    "load_embedder",
    "score_pairs",
]
