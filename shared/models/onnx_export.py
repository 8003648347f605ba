"""Tracing a BERT-like Hugging Face model to ONNX: the one export both ONNX runtimes use."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OPSET = 17
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_bert(
    model: torch.nn.Module,
    sample: Mapping[str, torch.Tensor],
    path: Path,
    output: str,
    per_token_output: bool,
) -> None:
    """Write `model` to `path` with the three BERT inputs (batch and token axes dynamic) and
    one output, the attribute `output` of its forward result (e.g. `last_hidden_state`,
    `logits`); `per_token_output`: that output has a token axis too. `model` must be a
    Hugging Face `PreTrainedModel`; it is switched to eager attention."""
    import torch
    from transformers import PreTrainedModel

    assert isinstance(model, PreTrainedModel)

    class Positional(torch.nn.Module):
        """Positional inputs and one tensor out: what the tracer takes."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, types: torch.Tensor
        ) -> torch.Tensor:
            result = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=types
            )
            tensor: torch.Tensor = getattr(result, output)
            return tensor

    output_axes = {0: "batch", 1: "tokens"} if per_token_output else {0: "batch"}
    # SDPA traces to a NaN guard (IsNaN + Where) over every (batch, head, token, token)
    # score; eager attention traces to a plain masked softmax, which onnxruntime runs faster.
    model.set_attn_implementation("eager")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on BERT's Python control flow
        torch.onnx.export(
            Positional(),
            tuple(sample[name] for name in BERT_INPUTS),
            str(path),
            input_names=list(BERT_INPUTS),
            output_names=[output],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in BERT_INPUTS}
            | {output: output_axes},
            opset_version=OPSET,
            dynamo=False,
        )
