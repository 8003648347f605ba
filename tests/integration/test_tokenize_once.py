"""Pairs are tokenized once (when costed) and scored from those encodings: the scores are the
ones each runtime gives when it tokenizes the text itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder
from tokenizers import Tokenizer

from rankstream.config import Settings
from rankstream.models.base import Pair, score_pairs
from rankstream.models.onnx_cross_encoder import OnnxCrossEncoder
from rankstream.models.registry import (
    fp32_reranker_dir,
    load_cross_encoder,
    packaged_int8_reranker_dir,
)
from rankstream.planning.scorers import MINILM_RERANKER_FP32, MINILM_RERANKER_INT8, PACKAGED_PREFIX
from rankstream.retrieval.corpus import read_documents, sample_corpus_path, sample_queries

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    """Sample queries against sample passages, plus one pair far over 512 tokens."""
    documents = [d.content for d in read_documents(sample_corpus_path())][:12]
    queries = [q.text for q in sample_queries()][:3]
    long_document = " ".join(documents) * 3
    return [(q, d) for q in queries for d in documents] + [(queries[0], long_document)]


def test_fp32_scores_from_encodings_equal_cross_encoder_predict(
    pairs: list[Pair], model_cache_dir: Path
) -> None:
    settings = Settings(
        reranker_model=PACKAGED_PREFIX + MINILM_RERANKER_FP32, model_cache_dir=model_cache_dir
    )
    model = load_cross_encoder(settings)
    reference = CrossEncoder(
        str(fp32_reranker_dir(settings)),
        max_length=settings.max_length,
        activation_fn=torch.nn.Identity(),
        local_files_only=True,
    ).predict(pairs, batch_size=len(pairs), convert_to_numpy=True)

    ours = score_pairs(model, pairs)

    assert (
        max(len(e) for e in model.tokenizer.encode(pairs)) == settings.max_length
    )  # truncation ran
    assert ours == pytest.approx(reference.tolist(), abs=1e-6)


def test_int8_scores_from_encodings_equal_the_tokenizers_own_padded_batch(
    pairs: list[Pair],
) -> None:
    model_dir = packaged_int8_reranker_dir()
    model = OnnxCrossEncoder(model_dir, PACKAGED_PREFIX + MINILM_RERANKER_INT8)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=model.max_length)
    encodings = tokenizer.encode_batch(pairs)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    (logits,) = model._session.run(None, feeds)

    ours = score_pairs(model, pairs)  # the same pairs in one batch: the same activation scales

    assert ours == pytest.approx(np.asarray(logits)[:, 0].tolist(), abs=1e-6)
