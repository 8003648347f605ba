"""The limit's batches: the least padding the batch limits allow, nothing lost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rankstream.scheduling.packing import tight_batches


@given(
    costs=st.lists(st.integers(1, 512), max_size=200),
    max_pairs=st.integers(1, 64),
    max_tokens=st.integers(512, 8192),
)
def test_every_pair_once_within_the_limits_in_length_order(
    costs: list[int], max_pairs: int, max_tokens: int
) -> None:
    pairs = [(f"q{i}", "d" * cost) for i, cost in enumerate(costs)]
    batches = tight_batches(pairs, costs, max_pairs, max_tokens)
    flat = [pair for batch in batches for pair in batch]
    assert sorted(flat) == sorted(pairs)
    assert [len(d) for _, d in flat] == sorted(costs)
    for batch in batches:
        assert len(batch) <= max_pairs
        assert len(batch) == 1 or len(batch) * max(len(d) for _, d in batch) <= max_tokens
