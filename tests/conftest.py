"""Shared fixtures: a real NATS server per session, real models, real LanceDB in temp dirs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.retrieval.corpus import read_documents, sample_corpus_path
from rankstream.workers.local import EmbeddedNatsServer
from tests.plans import TEST_DEPTH_POLICY

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """testcontainers' NATS where Docker runs, otherwise the nats-server binary on a free port."""
    if _docker_available():
        from testcontainers.nats import NatsContainer

        with NatsContainer("nats:2.10", jetstream=True) as container:
            yield container.nats_uri()
        return
    with EmbeddedNatsServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sample corpus, indexed once per session with the packaged bi-encoder."""
    from rankstream.models.registry import load_embedder, load_reranker_tokenizer
    from rankstream.retrieval.store import DocumentStore

    uri = str(tmp_path_factory.mktemp("lancedb"))
    settings = Settings(lancedb_uri=uri)
    DocumentStore.from_settings(settings).index(
        read_documents(sample_corpus_path()),
        load_embedder(settings),
        load_reranker_tokenizer(settings),
    )
    return uri


@pytest.fixture(scope="session")
def depth_policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "auto_depth.json"
    path.write_text(TEST_DEPTH_POLICY.to_json(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def token_model(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Path:
    """A late-interaction model (`maxsim`) distilled from the packaged teacher on three
    train queries of the sample collection: tiny, but a real one."""
    from rich.console import Console

    from rankstream.workers.tools.distill import LATE_INTERACTION, DistillOptions, run_distill
    from tests.collections import sample_beir

    root = tmp_path_factory.mktemp("token-model")
    model_dir = root / "tokens"
    # The setting may already name the model being written: distilling must not load it.
    settings = Settings(
        lancedb_uri=str(root / "db"),
        model_cache_dir=model_cache_dir,
        late_interaction_model=str(model_dir),
    )
    options = DistillOptions(
        sample_beir(root / "beir", train=4), model_dir, limit=3, depth=4, mode="dense",
        batch_size=8, max_length=64, student=LATE_INTERACTION,
        teacher_cache=root / "teacher.sqlite",
    )  # fmt: skip
    report = run_distill(settings, options, Console(quiet=True))
    assert report.onnx_dir is None
    return model_dir


@pytest.fixture
def settings(
    nats_url: str, sample_db: str, model_cache_dir: Path, depth_policy_file: Path
) -> Settings:
    """Settings for one test: its own subject prefix, so its streams are its own."""
    return Settings(
        nats_url=nats_url,
        subject_prefix=f"t{uuid.uuid4().hex[:10]}",
        lancedb_uri=sample_db,
        model_cache_dir=model_cache_dir,
        metrics_port=0,
        auto_depth_policy=depth_policy_file,
        # Off unless a test is about it: repeated queries must reach the models.
        cache_ttl_s=0,
        # JetStream reserves a bounded stream's max_bytes on disk at creation: every test's
        # streams share one server, so each keeps its bounds small.
        cache_max_bytes=16 << 20,
        results_max_bytes=16 << 20,
        dead_letters_max_bytes=16 << 20,
    )
