"""Shared by the fuzz tests: a valid value, then a few of its fields dropped or made wild."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

DROP = object()


def mutated(
    valid: st.SearchStrategy[dict[str, Any]], keys: list[str], wild: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts drawn from `valid` with up to two of `keys` (or an unknown field) dropped or
    replaced by a `wild` value: mostly valid, often just past what is."""
    mutation = st.tuples(st.sampled_from([*keys, "unknown_field"]), st.just(DROP) | wild)

    def apply(drawn: tuple[dict[str, Any], list[tuple[str, Any]]]) -> dict[str, Any]:
        value, mutations = drawn
        for key, new in mutations:
            if new is DROP:
                value.pop(key, None)
            else:
                value[key] = new
        return value

    return st.tuples(valid, st.lists(mutation, max_size=2)).map(apply)


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` four draws in five, else `rare` (st.one_of weighs its branches alike, and
    drops a branch given twice)."""
    return st.integers(0, 4).flatmap(lambda i: rare if i == 4 else usual)
