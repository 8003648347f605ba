"""Small BEIR collections built from the packaged sample corpus, for tests of the tools."""

from __future__ import annotations

import json
from pathlib import Path

from rankstream.retrieval.corpus import read_documents, sample_corpus_path, sample_queries


def sample_beir(root: Path, train: int = 0) -> Path:
    """BEIR layout at `root`: the sample passages, its queries, and their answers as grade-1
    judgments; the first `train` queries' go to qrels/train.tsv (0: no train split), the
    rest to qrels/test.tsv."""
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as corpus:
        for doc in read_documents(sample_corpus_path()):
            corpus.write(
                json.dumps({"_id": doc.doc_id, "title": doc.title, "text": doc.text}) + "\n"
            )
    queries = sample_queries()
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q.query_id, "text": q.text}) + "\n" for q in queries)
    )
    header = "query-id\tcorpus-id\tscore\n"
    for split, chosen in (("train", queries[:train]), ("test", queries[train:])):
        rows = [f"{q.query_id}\t{doc}\t1" for q in chosen for doc in q.relevant]
        if rows:
            (root / "qrels" / f"{split}.tsv").write_text(header + "\n".join(rows) + "\n")
    return root
