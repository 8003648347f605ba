"""One system's measurement, in a process of its own (so an in-process system's memory is its
own): `python -m rankstream.workers.tools.peers.measure SPEC.json OUT.json`.

For each depth k: the agreement pass (the first lists, one request at a time, scores kept;
it also warms the system up), closed loops at each client count, then an open loop at half
the saturated request rate; CPU seconds and peak memory of the system's processes over the
load phases."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from rankstream.config import Settings
from rankstream.workers.tools.peers.load import Phase, closed_loop, open_loop, scores_of
from rankstream.workers.tools.peers.systems import Running, all_systems
from rankstream.workers.tools.peers.workload import Workload

HALF_LOAD = 0.5
SAMPLE_EVERY_S = 0.2


@dataclass(frozen=True)
class MeasureSpec:
    system: str
    workload: str
    depths: list[int]
    clients: list[int]
    duration_s: float
    agreement_lists: int
    infinity_venv: str

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")


class ResourceMeter:
    """CPU seconds and the peak of summed resident memory of some processes and their
    children, sampled on a thread while `with meter:` lasts."""

    def __init__(self, pids: list[int]) -> None:
        self._roots = [psutil.Process(pid) for pid in pids]
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu_start = 0.0
        self.cpu_s = 0.0

    def _processes(self) -> list[psutil.Process]:
        found = []
        for root in self._roots:
            try:
                found += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def _cpu(self) -> float:
        total = 0.0
        for process in self._processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            rss = 0
            for process in self._processes():
                try:
                    rss += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)

    def __enter__(self) -> ResourceMeter:
        self._cpu_start = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = self._cpu() - self._cpu_start


async def measure_depth(
    running: Running, workload: Workload, k: int, spec: MeasureSpec, say: Any
) -> dict[str, Any]:
    requests = workload.at_depth(k)
    say(f"k={k}: agreement pass ({spec.agreement_lists} lists, one at a time)")
    agreement = await scores_of(running.score, requests[: spec.agreement_lists])
    phases: list[Phase] = []
    with ResourceMeter(running.pids()) as meter:
        for clients in spec.clients:
            say(f"k={k}: closed loop, {clients} clients")
            phases.append(await closed_loop(running.score, requests, clients, spec.duration_s))
        saturated = max(phases, key=lambda phase: phase.pairs / phase.window_s)
        rate = HALF_LOAD * len(saturated.latencies_ms) / saturated.window_s
        say(f"k={k}: open loop at half the saturated rate, {rate:.2f} requests/s")
        phases.append(await open_loop(running.score, requests, rate, spec.duration_s))
    answered_pairs = sum(phase.answered_pairs for phase in phases)
    return {
        "k": k,
        "agreement_scores": agreement,
        "phases": [phase.summary() for phase in phases],
        "saturated_clients": saturated.clients,
        "cpu_s": meter.cpu_s,
        "cpu_s_per_1000_pairs": 1000 * meter.cpu_s / answered_pairs if answered_pairs else None,
        "peak_rss_mb": meter.peak_rss_mb,
    }


async def measure(spec: MeasureSpec, settings: Settings) -> dict[str, Any]:
    (system,) = [s for s in all_systems(Path(spec.infinity_venv)) if s.name == spec.system]
    workload = Workload.load(Path(spec.workload))

    def say(line: str) -> None:
        print(f"{system.name}: {line}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    async with system.running(settings) as running:
        startup_s = time.perf_counter() - started
        say(f"ready in {startup_s:.1f} s")
        depths = [await measure_depth(running, workload, k, spec, say) for k in spec.depths]
    return {
        "system": system.name,
        "precision": system.precision,
        "weights": system.weights,
        "in_process": system.in_process,
        "startup_s": startup_s,
        "depths": depths,
    }


def main() -> None:
    spec_path, out_path = (Path(arg) for arg in sys.argv[1:3])
    spec = MeasureSpec(**json.loads(spec_path.read_text(encoding="utf-8")))
    result = asyncio.run(measure(spec, Settings()))
    out_path.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
