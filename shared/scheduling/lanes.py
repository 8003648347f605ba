"""Priority lanes: a request's priority (0-999, lower is sooner, as Cohere's rerank API has
it) picks one of three lanes the rerank worker's batcher serves most urgent first."""

from __future__ import annotations

LANES = ("interactive", "standard", "batch")
LANE_WIDTH = 1000 // len(LANES) + 1  # 0-333 interactive, 334-667 standard, 668-999 batch


def priority_lane(priority: int) -> int:
    """The lane (0: most urgent) of a priority in 0..999."""
    return min(len(LANES) - 1, max(0, priority) // LANE_WIDTH)


def lane_name(lane: int) -> str:
    return LANES[lane]
