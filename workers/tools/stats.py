"""Summary statistics the tools report (numpy only: bench and bench-store need no eval extra)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 95, 99)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """`p50`, `p95`, `p99` of `values` (linear interpolation)."""
    array = np.asarray(values, dtype=float)
    return {f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0
