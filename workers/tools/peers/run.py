"""`rankstream bench-peers`: the same workload, one system at a time, each measured in a
process of its own (`rankstream.workers.tools.peers.measure`), nothing else running; then the
table, the plot and the raw figures in the output folder."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from rankstream.config import Settings
from rankstream.models.registry import fp32_reranker_dir
from rankstream.workers.local import settings_env
from rankstream.workers.tools.errors import UsageError
from rankstream.workers.tools.peers.measure import MeasureSpec
from rankstream.workers.tools.peers.report import markdown_table, plot, summarise
from rankstream.workers.tools.peers.systems import all_systems
from rankstream.workers.tools.peers.workload import Workload, build_workload

MEASURE = "rankstream.workers.tools.peers.measure"


@dataclass(frozen=True)
class PeersOptions:
    data_dir: Path
    out_dir: Path
    infinity_venv: Path
    systems: tuple[str, ...] = ()  # empty: all
    depths: tuple[int, ...] = (10, 50)
    clients: tuple[int, ...] = (1, 8, 32)
    duration_s: float = 20.0
    queries: int = 100
    doc_tokens: int = 128
    agreement_lists: int = 10


def reference_scores(settings: Settings, workload: Workload, lists: int) -> list[list[float]]:
    """The fp32 model's scores (sentence-transformers `CrossEncoder`) for the first `lists`
    requests at the deepest depth; a shallower list is a prefix of it."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(fp32_reranker_dir(settings)), device="cpu", local_files_only=True)
    return [
        [
            float(s)
            for s in model.predict([(r.query, d) for d in r.documents], show_progress_bar=False)
        ]
        for r in workload.requests[:lists]
    ]


def chosen_systems(options: PeersOptions) -> list[str]:
    known = [system.name for system in all_systems(options.infinity_venv)]
    unknown = sorted(set(options.systems) - set(known))
    if unknown:
        raise UsageError(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [name for name in known if not options.systems or name in options.systems]


async def run_peers(
    settings: Settings, options: PeersOptions, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    names = chosen_systems(options)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    progress(f"workload: {options.queries} queries, top {max(options.depths)} dense candidates")
    workload = await build_workload(
        settings,
        options.data_dir,
        max(options.depths),
        options.doc_tokens,
        options.queries,
        console,
    )
    workload_path = options.out_dir / "workload.json"
    workload.save(workload_path)
    progress("fp32 reference scores (sentence-transformers CrossEncoder)")
    reference = reference_scores(settings, workload, options.agreement_lists)
    results = [_measure_one(settings, name, workload_path, options, progress) for name in names]
    rows = summarise(results, reference)
    (options.out_dir / "results.json").write_text(
        json.dumps({"options": _describe(options), "rows": rows}, indent=1), encoding="utf-8"
    )
    (options.out_dir / "peers.md").write_text(
        markdown_table(rows, options.clients), encoding="utf-8"
    )
    plot(rows, options.out_dir / "peers.png")
    return rows


def _measure_one(
    settings: Settings,
    name: str,
    workload_path: Path,
    options: PeersOptions,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    progress(f"{name}: starting")
    with tempfile.TemporaryDirectory(prefix="rankstream-peers-") as scratch:
        spec_path, out_path = Path(scratch) / "spec.json", Path(scratch) / "out.json"
        MeasureSpec(
            system=name,
            workload=str(workload_path),
            depths=list(options.depths),
            clients=list(options.clients),
            duration_s=options.duration_s,
            agreement_lists=options.agreement_lists,
            infinity_venv=str(options.infinity_venv),
        ).save(spec_path)
        done = subprocess.run(
            [sys.executable, "-m", MEASURE, str(spec_path), str(out_path)],
            env=settings_env(settings),
            check=False,
        )
        if done.returncode != 0:
            raise UsageError(f"measuring {name} failed (exit {done.returncode}): see above")
        result: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
        return result


def _describe(options: PeersOptions) -> dict[str, Any]:
    return {
        "data_dir": str(options.data_dir),
        "depths": list(options.depths),
        "clients": list(options.clients),
        "duration_s": options.duration_s,
        "queries": options.queries,
        "doc_tokens": options.doc_tokens,
        "agreement_lists": options.agreement_lists,
    }
