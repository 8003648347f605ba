"""Pairs tokenized once: when the scheduler costs them, and never again.

A pair is encoded (truncated, unpadded) by `PairTokenizer.encode`; its `PairEncoding` rides
in the batcher's queue as the item itself, its length is its cost, and the batch the model
scores is padded from those encodings by `PairTokenizer.pad`. Both cross-encoder runtimes
use it, over the `tokenizers` (Rust) tokenizer the model ships with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from rankstream.models.base import Pair, PairEncoding

TokenArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PaddedBatch:
    """A batch as the model takes it: `input_ids`, `attention_mask`, `token_type_ids`, each
    (pairs, longest pair) int64, padded with `pad_id` and mask 0."""

    input_ids: TokenArray
    attention_mask: TokenArray
    token_type_ids: TokenArray

    def as_dict(self) -> dict[str, TokenArray]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


class PairTokenizer:
    """Encodes pairs for one cross-encoder and pads batches of encodings.

    Args:
        tokenizer: the model's `tokenizers.Tokenizer`; a copy is configured here (truncation
            to `max_length`, no padding), so the caller's object is left as it was.
        max_length: tokens per pair after truncation (query and document together, longest
            first, as Hugging Face tokenizers truncate pairs).
        pad_id: the padding token's id.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int = 0) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.pad_id = pad_id

    def encode(self, pairs: Sequence[Pair]) -> list[PairEncoding]:
        """One encoding per pair, in order."""
        if not pairs:
            return []
        return [
            PairEncoding(tuple(e.ids), tuple(e.type_ids))
            for e in self._tokenizer.encode_batch(list(pairs))
        ]

    def pad(self, batch: Sequence[PairEncoding]) -> PaddedBatch:
        """The batch padded to its longest encoding."""
        longest = max((len(encoding) for encoding in batch), default=0)
        input_ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), longest), dtype=np.int64)
        token_type_ids = np.zeros((len(batch), longest), dtype=np.int64)
        for row, encoding in enumerate(batch):
            width = len(encoding)
            input_ids[row, :width] = encoding.ids
            attention_mask[row, :width] = 1
            token_type_ids[row, :width] = encoding.type_ids
        return PaddedBatch(input_ids, attention_mask, token_type_ids)
