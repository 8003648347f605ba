"""Batches cut from a known set of items: sorted by cost (a pair's token count) and closed
where the next item would break the batch limits, so a batch pads as little as the limits
allow. The micro-batcher does the same over what is queued; this is for work whose items are
all known up front (a benchmark's reference shapes, a tune scoring each query's candidates
as a rerank worker would batch them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def tight_batches(
    items: Sequence[T], costs: Sequence[int], max_items: int, max_tokens: int
) -> list[list[T]]:
    """`items` in batches of at most `max_items`, each at most `max_tokens` padded tokens
    (items x costliest item; a single item over it gets a batch of its own), in cost order.
    Raises ValueError when `items` and `costs` differ in length."""
    if len(items) != len(costs):
        raise ValueError(f"{len(items)} items but {len(costs)} costs")
    if not items:
        return []
    batches: list[list[T]] = [[]]
    longest = 0
    for cost, item in sorted(zip(costs, items, strict=True), key=lambda t: t[0]):
        size = len(batches[-1]) + 1
        if batches[-1] and (size > max_items or size * max(longest, cost) > max_tokens):
            batches.append([])
            longest = 0
        batches[-1].append(item)
        longest = max(longest, cost)
    return batches
