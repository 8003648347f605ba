"""How many queries a tune keeps under `--max-minutes`: the lists are cut from their end, the
held-out queries keep up to half the time, and no list is cut below MIN_QUERIES."""

from __future__ import annotations

from rankstream.workers.tools.tune_time import (
    MIN_QUERIES,
    affordable,
    ms_per_document,
    query_ms,
)

MINUTE = 60_000.0  # ms


def test_lists_that_fit_are_kept_whole() -> None:
    fit = affordable([MINUTE] * 20, [MINUTE] * 10, minutes=30)

    assert (fit.tuning, fit.held_out) == (20, 10)
    assert not fit.cuts(20, 10)
    assert fit.all_minutes == 30


def test_the_tuning_queries_are_cut_to_what_the_held_out_queries_leave() -> None:
    fit = affordable([MINUTE] * 40, [MINUTE] * 12, minutes=30)

    assert (fit.tuning, fit.held_out) == (18, 12)  # 12 min of held-out queries, 18 left
    assert fit.cuts(40, 12)
    assert fit.all_minutes == 52


def test_when_both_lists_are_too_long_the_held_out_queries_get_half_the_time() -> None:
    fit = affordable([MINUTE] * 40, [MINUTE] * 40, minutes=30)

    assert (fit.tuning, fit.held_out) == (15, 15)


def test_held_out_queries_take_what_the_tuning_queries_do_not_need() -> None:
    fit = affordable([MINUTE] * 10, [MINUTE] * 40, minutes=30)

    assert (fit.tuning, fit.held_out) == (10, 20)


def test_under_cross_validation_the_one_list_is_cut() -> None:
    fit = affordable([MINUTE] * 50, None, minutes=30)

    assert (fit.tuning, fit.held_out) == (30, 30)
    assert fit.all_minutes == 50


def test_no_list_is_cut_below_the_minimum_or_the_folds_it_needs() -> None:
    too_short = affordable([MINUTE] * 40, [MINUTE] * 40, minutes=1)
    assert (too_short.tuning, too_short.held_out) == (MIN_QUERIES, MIN_QUERIES)

    many_folds = affordable([MINUTE] * 40, None, minutes=1, at_least=MIN_QUERIES + 5)
    assert many_folds.tuning == MIN_QUERIES + 5

    small = affordable([MINUTE] * 3, [MINUTE] * 4, minutes=1)
    assert (small.tuning, small.held_out) == (3, 4)


def test_a_query_is_estimated_from_its_documents_at_each_budgets_cost() -> None:
    # /maxp128 scores two windows a document at 10 ms a pair; /doc128 one pair at 8 ms.
    per_document = ms_per_document({"/maxp128": 10.0, "/doc128": 8.0}, {"/maxp128": 2.0})

    assert per_document == {"/maxp128": 20.0, "/doc128": 8.0}
    assert query_ms({"/maxp128": 3, "/doc128": 5}, per_document) == 100.0
    # A budget the first queries did not score is costed as the dearest one measured.
    assert query_ms({"/best64": 2}, per_document) == 40.0
