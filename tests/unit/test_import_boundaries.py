"""What importing scheduling really loads: no model runtime, no transport, no store.

import-linter checks the import graph the code declares, but not what a parent package's
`__init__` brings in on the way; a fresh interpreter tells what an import loads at run time.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import rankstream.scheduling

HEAVY = ("tokenizers", "onnxruntime", "torch", "sentence_transformers", "nats", "faststream",
         "lancedb")  # fmt: skip
SCHEDULING = [
    "rankstream.scheduling",
    *(
        f"rankstream.scheduling.{m.name}"
        for m in pkgutil.iter_modules(rankstream.scheduling.__path__)
    ),
]


def heavy_modules_loaded_by(module: str) -> list[str]:
    """The packages of HEAVY in `sys.modules` after importing `module` in a fresh interpreter."""
    probe = (
        "import importlib, json, sys; importlib.import_module(sys.argv[1]); "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, module],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return [name for name in json.loads(run.stdout) if name in HEAVY]


def test_every_scheduling_module_is_checked() -> None:
    assert {"rankstream.scheduling.batcher", "rankstream.scheduling.pair_scheduler"} <= set(
        SCHEDULING
    )


@pytest.mark.parametrize("module", SCHEDULING)
def test_scheduling_loads_no_model_runtime_transport_or_store(module: str) -> None:
    assert heavy_modules_loaded_by(module) == []


@pytest.mark.parametrize("module", ["rankstream", "rankstream.models", "rankstream.models.base"])
def test_the_package_and_the_model_protocols_load_no_runtime(module: str) -> None:
    assert heavy_modules_loaded_by(module) == []
