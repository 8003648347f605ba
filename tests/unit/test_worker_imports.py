"""What a worker process imports, checked in a fresh interpreter (this one has imported
everything the other tests needed): every replica pays for each module it loads."""

from __future__ import annotations

import subprocess
import sys

# Not `uvicorn`: FastStream itself imports it at import time wherever it is installed.
GATEWAY_AND_HARNESS = (
    "fastapi",
    "rankstream.workers.gateway",
    "rankstream.workers.stack",
    "rankstream.workers.local",
)
MODEL_RUNTIMES_A_PLAN_MAY_NEVER_NEED = ("torch", "sentence_transformers", "lancedb")


def loaded_after_importing(*modules: str) -> set[str]:
    """The names of `sys.modules` after a fresh interpreter imported `modules`."""
    imports = [f"importlib.import_module({module!r})" for module in modules]
    code = "\n".join(["import importlib, sys", *imports, "print('\\n'.join(sys.modules))"])
    listing = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(listing.stdout.split())


def test_a_worker_process_imports_neither_the_gateway_nor_up_s_stack_nor_the_harness() -> None:
    """`rankstream worker retrieval|rerank`: the command line, the app and both workers."""
    loaded = loaded_after_importing(
        "rankstream.workers.cli",
        "rankstream.workers.app",
        "rankstream.workers.retrieval",
        "rankstream.workers.rerank",
    )
    assert "rankstream.workers.app" in loaded
    assert loaded.isdisjoint(GATEWAY_AND_HARNESS), loaded.intersection(GATEWAY_AND_HARNESS)


def test_the_rerank_worker_imports_no_torch_sentence_transformers_or_lancedb() -> None:
    """They load when a plan first needs them (the MaxSim stage, a torch cross-encoder):
    the packaged int8 ONNX reranker needs only onnxruntime and tokenizers."""
    loaded = loaded_after_importing("rankstream.workers.app", "rankstream.workers.rerank")
    assert "rankstream.workers.rerank" in loaded
    assert loaded.isdisjoint(MODEL_RUNTIMES_A_PLAN_MAY_NEVER_NEED), loaded.intersection(
        MODEL_RUNTIMES_A_PLAN_MAY_NEVER_NEED
    )
