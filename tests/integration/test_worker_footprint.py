"""What a started worker process holds in memory: the runtimes its models need, no more."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankstream.config import Settings
from rankstream.planning.scorers import MINILM_RERANKER_INT8, PACKAGED_PREFIX
from rankstream.workers.local import WorkerProcess

pytestmark = pytest.mark.integration


def mapped_files(pid: int) -> str:
    """The shared libraries and files mapped into a process (Linux)."""
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_rerank_worker_serving_the_packaged_int8_model_maps_neither_torch_nor_lancedb(
    settings: Settings,
) -> None:
    int8 = settings.model_copy(update={"reranker_model": PACKAGED_PREFIX + MINILM_RERANKER_INT8})
    with WorkerProcess("rerank", int8) as worker:
        maps = mapped_files(worker.pid)
    assert "onnxruntime" in maps  # the model it serves is loaded
    assert "libtorch" not in maps
    assert "lancedb" not in maps
