"""Reading documents and queries: BEIR layout or plain JSONL, and the built-in sample."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from rankstream.errors import InvalidRequestError

MetadataValue = str | int | float | bool
# Extra fields that become filterable columns: plain identifiers, not the table's own.
METADATA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
RESERVED_COLUMNS = frozenset({"id", "_id", "title", "text", "content", "vector", "doc_tokens"})


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    title: str = ""
    # The line's other scalar fields (and those of a `metadata` object): filterable columns.
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)

    @property
    def content(self) -> str:
        """What gets embedded and reranked: `title + " " + text`, as BEIR builds it."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True)
class SampleQuery:
    query_id: str
    text: str
    relevant: tuple[str, ...]


def corpus_file(path: Path) -> Path:
    """A BEIR folder's `corpus.jsonl`, or the JSONL file itself."""
    candidate = path / "corpus.jsonl" if path.is_dir() else path
    if not candidate.is_file():
        raise InvalidRequestError(f"no corpus at {path}: pass a JSONL file or a BEIR folder")
    return candidate


def read_documents(path: Path) -> Iterator[Document]:
    """Each line `{"_id"|"id": ..., "text": ..., "title"?: ...}`; bad lines name their number."""
    with corpus_file(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield _document(line, number)


def _document(line: str, number: int) -> Document:
    try:
        row = json.loads(line)
        doc_id = row.get("_id", row.get("id"))
        text = row["text"]
    except (json.JSONDecodeError, KeyError, AttributeError) as error:
        raise InvalidRequestError(f"corpus line {number}: {error!r}") from error
    if doc_id is None or not isinstance(text, str):
        raise InvalidRequestError(f"corpus line {number}: needs an id and a text")
    return Document(str(doc_id), text, str(row.get("title") or ""), _metadata(row))


def _metadata(row: dict[str, object]) -> dict[str, MetadataValue]:
    """The scalar extra fields of a corpus line, one level of a `metadata` object included
    (BEIR's place for them); nested values and names that are not identifiers are left out."""
    nested = row.get("metadata")
    fields = {**(nested if isinstance(nested, dict) else {}), **row}
    return {
        name: value
        for name, value in fields.items()
        if name not in RESERVED_COLUMNS
        and METADATA_NAME.match(name)
        and isinstance(value, str | int | float | bool)
    }


def sample_corpus_path() -> Path:
    return Path(str(resources.files("rankstream") / "sample_data" / "corpus.jsonl"))


def sample_queries() -> list[SampleQuery]:
    path = resources.files("rankstream") / "sample_data" / "queries.jsonl"
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [SampleQuery(r["id"], r["text"], tuple(r.get("relevant", ()))) for r in rows]
