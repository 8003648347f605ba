"""Reading documents and queries: BEIR layout or plain JSONL, and the built-in sample."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rankstream.errors import InvalidRequestError


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    title: str = ""

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
    return Document(str(doc_id), text, str(row.get("title") or ""))


def sample_corpus_path() -> Path:
    return Path(str(resources.files("rankstream") / "sample_data" / "corpus.jsonl"))


def sample_queries() -> list[SampleQuery]:
    path = resources.files("rankstream") / "sample_data" / "queries.jsonl"
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [SampleQuery(r["id"], r["text"], tuple(r.get("relevant", ()))) for r in rows]
