"""The pair budget: how many pairs a rerank worker holds at once."""

from __future__ import annotations

import asyncio

import pytest

from rankstream.scheduling.admission import PairBudget


async def test_holders_beyond_the_budget_wait_until_pairs_are_released() -> None:
    budget = PairBudget(10)
    release_first = asyncio.Event()
    order: list[str] = []

    async def holder(name: str, pairs: int, until: asyncio.Event | None = None) -> None:
        async with budget.hold(pairs):
            order.append(name)
            if until is not None:
                await until.wait()

    first = asyncio.create_task(holder("first", 8, release_first))
    await asyncio.sleep(0)
    second = asyncio.create_task(holder("second", 5))
    await asyncio.sleep(0.01)
    assert order == ["first"]
    assert budget.held == 8
    release_first.set()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert budget.held == 0


async def test_a_request_larger_than_the_budget_takes_all_of_it_instead_of_waiting_forever() -> (
    None
):
    budget = PairBudget(4)
    async with budget.hold(100):
        assert budget.held == 4


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PairBudget(0)
