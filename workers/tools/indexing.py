"""Indexing a corpus into LanceDB with a progress bar (the `index` and `eval` verbs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from rankstream.config import Settings
from rankstream.models import Embedder, load_embedder
from rankstream.models.registry import load_reranker_tokenizer
from rankstream.retrieval.corpus import corpus_file, read_documents
from rankstream.retrieval.store import TABLE_LAYOUT, DocumentStore


def count_lines(path: Path) -> int:
    with corpus_file(path).open(encoding="utf-8") as lines:
        return sum(1 for line in lines if line.strip())


def index_corpus(
    settings: Settings, path: Path, console: Console, embedder: Embedder | None = None
) -> int:
    """Embed, tokenize for the configured reranker, and upsert every document of `path`
    into the configured table."""
    store = DocumentStore.from_settings(settings)
    if embedder is None:
        with console.status("loading the embedder"):
            embedder = load_embedder(settings)
    tokenizer = load_reranker_tokenizer(settings)
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(f"indexing {path}", total=count_lines(path))
        return store.index(
            read_documents(path),
            embedder,
            tokenizer,
            on_chunk=lambda n: progress.advance(task, n),
        )


def content_table_name(path: Path, settings: Settings) -> str:
    """A table name that changes when the corpus content, the embedder, the reranker's
    tokenizer or the table layout changes."""
    tokenizer = load_reranker_tokenizer(settings).fingerprint
    digest = hashlib.sha256(f"{settings.embedder_model}|{tokenizer}|{TABLE_LAYOUT}".encode())
    with corpus_file(path).open("rb") as corpus:
        for block in iter(lambda: corpus.read(1 << 20), b""):
            digest.update(block)
    stem = "".join(c if c.isalnum() else "_" for c in path.resolve().name)
    return f"eval_{stem}_{digest.hexdigest()[:12]}"


def ensure_indexed(settings: Settings, path: Path, console: Console) -> Settings:
    """Settings whose table holds `path` embedded with the configured model: reused when it
    already does, (re)indexed otherwise."""
    settings = settings.model_copy(update={"table": content_table_name(path, settings)})
    store = DocumentStore.from_settings(settings)
    documents = count_lines(path)
    if store.count() == documents:
        console.print(f"[dim]reusing table {settings.table} ({documents} documents)[/dim]")
        store.ensure_indexes()  # a table indexed before an index was added
    else:
        index_corpus(settings, path, console)
    return settings
