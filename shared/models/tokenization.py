"""Pairs tokenized once: when the scheduler costs them, and never again.

A pair's encoding is built from the query's token ids and the document's (each without
special tokens) by the model's own pair template (`[CLS] q [SEP] d [SEP]` for BERT, found
by probing the tokenizer, so any template works). Documents can be tokenized at index time
and stored with their row (`tokenize_documents`); then the rerank worker tokenizes only the
query. The query is never truncated: a document gets the room the query leaves, or less
under a token budget.

The `PairEncoding` rides in the batcher's queue as the item itself, its length is its cost,
and the batch the model scores is padded from those encodings (`pad`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from rankstream.errors import InvalidRequestError
from rankstream.models.base import Pair, PairEncoding, TokenIds

TokenArray = npt.NDArray[np.int64]
# A document gets at least this many tokens beside the query, or the query is refused.
MIN_DOCUMENT_TOKENS = 16
PROBE = ("a", "b")


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


@dataclass(frozen=True)
class PairTemplate:
    """Where a pair's special tokens go: `prefix` query `middle` document `suffix`, with the
    segment (type) id of each part."""

    prefix: TokenIds
    middle: TokenIds
    suffix: TokenIds
    query_type: int
    document_type: int
    prefix_types: TokenIds
    middle_types: TokenIds
    suffix_types: TokenIds

    @property
    def special_tokens(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def probe(cls, tokenizer: Tokenizer) -> PairTemplate:
        """Read the template off the tokenizer's encoding of a one-token pair."""
        query = tokenizer.encode(PROBE[0], add_special_tokens=False).ids
        document = tokenizer.encode(PROBE[1], add_special_tokens=False).ids
        pair = tokenizer.encode(*PROBE)
        ids, types = list(pair.ids), list(pair.type_ids)
        q_at = _find(ids, query, 0)
        d_at = _find(ids, document, q_at + len(query))
        d_end = d_at + len(document)
        return cls(
            prefix=tuple(ids[:q_at]),
            middle=tuple(ids[q_at + len(query) : d_at]),
            suffix=tuple(ids[d_end:]),
            query_type=types[q_at],
            document_type=types[d_at],
            prefix_types=tuple(types[:q_at]),
            middle_types=tuple(types[q_at + len(query) : d_at]),
            suffix_types=tuple(types[d_end:]),
        )

    def join(self, query: TokenIds, document: TokenIds) -> PairEncoding:
        ids = (*self.prefix, *query, *self.middle, *document, *self.suffix)
        types = (
            *self.prefix_types,
            *(self.query_type,) * len(query),
            *self.middle_types,
            *(self.document_type,) * len(document),
            *self.suffix_types,
        )
        return PairEncoding(ids, types)


def _find(ids: list[int], part: list[int], start: int) -> int:
    for at in range(start, len(ids) - len(part) + 1):
        if ids[at : at + len(part)] == part:
            return at
    raise ValueError("the tokenizer's pair template could not be read")


class PairTokenizer:
    """Encodes queries, documents and pairs for one cross-encoder, and pads batches.

    Args:
        tokenizer: the model's `tokenizers.Tokenizer`; a copy is configured here (no
            truncation, no padding), so the caller's object is left as it was.
        max_length: tokens per pair the model reads, special tokens included.
        pad_id: the padding token's id.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int = 0) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.template = PairTemplate.probe(self._tokenizer)
        self.max_length = max_length
        self.pad_id = pad_id
        self.fingerprint = tokenizer_fingerprint(self._tokenizer)

    def encode_query(self, query: str) -> TokenIds:
        """The query's ids, without special tokens. Raises InvalidRequestError when it
        leaves a document fewer than MIN_DOCUMENT_TOKENS tokens: it is never truncated."""
        ids = tuple(self._tokenizer.encode(query, add_special_tokens=False).ids)
        if self.document_room(ids) < MIN_DOCUMENT_TOKENS:
            raise InvalidRequestError(
                f"the query is {len(ids)} tokens; with the model's {self.max_length} a "
                f"document would get fewer than {MIN_DOCUMENT_TOKENS}: shorten the query"
            )
        return ids

    def encode_documents(self, documents: Sequence[str]) -> list[TokenIds]:
        """Each document's ids, without special tokens, whole (budgets cut them later)."""
        if not documents:
            return []
        return [
            tuple(e.ids)
            for e in self._tokenizer.encode_batch(list(documents), add_special_tokens=False)
        ]

    def document_room(self, query: TokenIds) -> int:
        """Tokens a document may have beside `query` within `max_length`."""
        return self.max_length - len(query) - self.template.special_tokens

    def keep_tails(
        self, query: str, documents: Sequence[str], max_tokens: int | None = None
    ) -> list[str]:
        """Each document cut from the left (text-embeddings-inference's `truncation_direction:
        Left`) to the room `query` leaves it (and at most `max_tokens`), as text: it then
        fits whole, and a pair that cuts the head keeps all of it. The cut falls where a
        word starts, so the tail tokenizes as it did inside the document (a few tokens fewer
        than the room where the cut would split a word). Raises InvalidRequestError for a
        query that leaves no room (`encode_query`)."""
        room = self.document_room(self.encode_query(query))
        if max_tokens is not None:
            room = min(room, max_tokens)
        if not documents:
            return []
        tails = []
        encodings = self._tokenizer.encode_batch(list(documents), add_special_tokens=False)
        for text, encoding in zip(documents, encodings, strict=True):
            count = len(encoding.ids)
            if count <= room:
                tails.append(text)
                continue
            first, words = count - room, encoding.word_ids
            while (
                first < count - 1 and words[first] is not None and words[first] == words[first - 1]
            ):
                first += 1
            tails.append(text[encoding.offsets[first][0] :])
        return tails

    def join(self, query: TokenIds, document: TokenIds) -> PairEncoding:
        """The pair as the model reads it; the document is cut to the room the query leaves."""
        return self.template.join(query, document[: self.document_room(query)])

    def encode(self, pairs: Sequence[Pair]) -> list[PairEncoding]:
        """One encoding per pair, in order: query whole, document cut to fit."""
        queries = {query: self.encode_query(query) for query in dict.fromkeys(q for q, _ in pairs)}
        documents = self.encode_documents([document for _, document in pairs])
        return [
            self.join(queries[query], document)
            for (query, _), document in zip(pairs, documents, strict=True)
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


def _inside_word(words: list[int | None], at: int) -> bool:
    """Whether token `at` continues the word the token before it is part of."""
    return words[at] is not None and words[at] == words[at - 1]


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """Names a tokenizer's vocabulary and rules (not its padding or truncation): documents
    tokenized at index time are used only by a model whose tokenizer has the same one."""
    config = json.loads(tokenizer.to_str())
    config.pop("padding", None)
    config.pop("truncation", None)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
