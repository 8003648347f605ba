"""Infinity (michaelfeil/infinity) in a virtual environment of its own.

Why not an extra of rankstream's: `infinity-emb` 0.0.78 pins sentence-transformers < 4 and
numpy < 2, and its ONNX engine needs an optimum (< 2: 2.x takes the ONNX file's path as a
relative name and fails to load a local folder) whose BetterTransformer import refuses
transformers >= 4.49. Those pins cannot live beside rankstream's own (sentence-transformers
6); they can beside each other, in a folder the bench makes once and reuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rankstream.workers.tools.errors import UsageError

# Tried together on these machines: the torch and optimum engines both load local folders.
REQUIREMENTS = (
    "torch==2.13.0",  # the CPU build that lies on disk here (an unpinned torch is CUDA's)
    "infinity-emb[server,torch]==0.0.78",
    "optimum==1.24.0",
    "onnxruntime",
    "onnx",  # optimum's ONNX exporter, imported by its onnxruntime models
    "transformers==4.48.3",
    "numpy<2",
)


DEFAULT_VENV = Path.home() / ".cache" / "rankstream" / "peers" / "infinity"


def infinity_command(venv: Path = DEFAULT_VENV) -> Path:
    """The `infinity_emb` program of the environment at `venv`, made there first if absent
    (about 45 s with a local package index; the pip output goes to `venv/install.log`)."""
    program = venv / "bin" / "infinity_emb"
    if program.is_file():
        return program
    venv.mkdir(parents=True, exist_ok=True)
    log = venv / "install.log"
    steps = (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "--upgrade", "pip"],
        [str(venv / "bin" / "pip"), "install", "--quiet", *REQUIREMENTS],
    )
    with log.open("w", encoding="utf-8") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                raise UsageError(f"could not install Infinity into {venv}: see {log}")
    if not program.is_file():
        raise UsageError(f"{program} is missing after the install: see {log}")
    return program


if __name__ == "__main__":  # `python -m rankstream.workers.tools.peers.infinity_env`: make it now
    print(infinity_command())
