"""The one workload every system gets: SciFact-style test queries, each with its top candidates
from rankstream's own dense retrieval, the documents cut to the same token budget once, here,
so that no system truncates and every system scores the same pair texts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from rankstream.config import Settings
from rankstream.models.registry import fp32_reranker_dir, load_embedder
from rankstream.retrieval.fusion import SearchMode
from rankstream.retrieval.store import DocumentStore
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.evaluation import read_qrels, read_queries
from rankstream.workers.tools.indexing import ensure_indexed


@dataclass(frozen=True)
class PeerRequest:
    """One rerank request: a query and its candidates, best retrieved first."""

    query: str
    documents: tuple[str, ...]

    def first(self, k: int) -> PeerRequest:
        return PeerRequest(self.query, self.documents[:k])


@dataclass(frozen=True)
class Workload:
    requests: tuple[PeerRequest, ...]
    doc_tokens: int

    def at_depth(self, k: int) -> list[PeerRequest]:
        return [request.first(k) for request in self.requests]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Workload:
        raw = json.loads(path.read_text(encoding="utf-8"))
        requests = tuple(PeerRequest(r["query"], tuple(r["documents"])) for r in raw["requests"])
        return cls(requests, raw["doc_tokens"])


def test_queries(data_dir: Path, limit: int) -> list[str]:
    """The first `limit` queries of the collection's test split (all queries without one)."""
    queries = read_queries(data_dir)
    judged = read_qrels(data_dir, "test") if (data_dir / "qrels" / "test.tsv").is_file() else {}
    chosen = [text for query_id, text in queries.items() if not judged or query_id in judged]
    if not chosen:
        raise UsageError(f"{data_dir} has no queries")
    return chosen[:limit]


async def build_workload(
    settings: Settings, data_dir: Path, depth: int, doc_tokens: int, limit: int, console: Console
) -> Workload:
    """Each test query with its dense top `depth`, documents cut to `doc_tokens` tokens of the
    reranker's tokenizer (the query is never cut)."""
    settings = ensure_indexed(settings, data_dir, console)
    store = DocumentStore.from_settings(settings)
    embedder = load_embedder(settings)
    cut = DocumentCutter(fp32_reranker_dir(settings) / "tokenizer.json", doc_tokens)
    requests = []
    for query in test_queries(data_dir, limit):
        vector = np.asarray(embedder.embed_queries([query]))[0]
        found = await store.search(query, vector, depth, SearchMode.DENSE)
        if len(found.hits) < depth:
            raise UsageError(f"the collection has fewer than {depth} documents for {query!r}")
        requests.append(PeerRequest(query, tuple(cut(hit.text) for hit in found.hits)))
    return Workload(tuple(requests), doc_tokens)


class DocumentCutter:
    """A document's first `tokens` word pieces, back as text."""

    def __init__(self, tokenizer_file: Path, tokens: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._tokens = tokens

    def __call__(self, text: str) -> str:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) <= self._tokens:
            return text
        return str(self._tokenizer.decode(ids[: self._tokens]))
