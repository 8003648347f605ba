"""Indexing a corpus into LanceDB with a progress bar (the `index` and `eval` verbs)."""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from rankstream.config import Settings
from rankstream.models.base import Embedder
from rankstream.models.registry import load_embedder, load_reranker_tokenizer, load_token_embedder
from rankstream.retrieval.corpus import corpus_file, read_documents
from rankstream.retrieval.store import TABLE_LAYOUT, DocumentStore
from rankstream.retrieval.token_store import VECTOR_BYTES, TokenStore
from rankstream.workers.tools.progress import progress

if TYPE_CHECKING:
    from rankstream.models.late_interaction import TokenEmbedder

TOKEN_CHUNK = 64


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
    with progress(console, f"indexing {path}", count_lines(path)) as advance:
        indexed = store.index(read_documents(path), embedder, tokenizer, on_chunk=advance)
    if settings.late_interaction_model is not None:
        index_token_vectors(settings, path, console)
    return indexed


def index_token_vectors(
    settings: Settings, path: Path, console: Console, embedder: TokenEmbedder | None = None
) -> TokenReport:
    """Encode every document of `path` with the late-interaction model (`embedder`, loaded
    from the settings when not given) and store its token vectors beside the configured
    table (`rankstream.retrieval.token_store`)."""
    embedder = embedder or load_token_embedder(settings)
    tokens = TokenStore.of(embedder, settings.lancedb_uri, settings.table)
    started, stored_bytes, documents = time.perf_counter(), 0, 0
    with progress(console, "token vectors", count_lines(path)) as advance:
        documents_left = read_documents(path)
        while chunk := list(itertools.islice(documents_left, TOKEN_CHUNK)):
            vectors = embedder.embed_documents([document.content for document in chunk])
            tokens.write([document.doc_id for document in chunk], vectors)
            stored_bytes += sum(v.shape[0] * v.shape[1] * VECTOR_BYTES for v in vectors)
            documents += len(chunk)
            advance(len(chunk))
    tokens.ensure_id_index()
    report = TokenReport(documents, stored_bytes, time.perf_counter() - started)
    console.print(
        f"[dim]token vectors: {documents} documents in {report.seconds:.0f} s, "
        f"{report.bytes_per_document / 1024:.1f} KiB per document ({tokens.name})[/dim]"
    )
    return report


@dataclass(frozen=True)
class TokenReport:
    documents: int
    vector_bytes: int  # the vectors alone, without LanceDB's list offsets
    seconds: float

    @property
    def bytes_per_document(self) -> float:
        return self.vector_bytes / max(1, self.documents)


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
    if store.count() != documents:
        index_corpus(settings, path, console)
        return settings
    console.print(f"[dim]reusing table {settings.table} ({documents} documents)[/dim]")
    store.ensure_indexes()  # a table indexed before an index was added
    if settings.late_interaction_model is not None:
        embedder = load_token_embedder(settings)
        tokens = TokenStore.of(embedder, settings.lancedb_uri, settings.table)
        if tokens.count() != documents:
            index_token_vectors(settings, path, console, embedder)
        else:
            tokens.ensure_id_index()  # a table written before reads went by id
    return settings
