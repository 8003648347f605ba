"""What makes two requests the same cached answer."""

from __future__ import annotations

import pytest

from rankstream.cache.keys import cache_key, context_digest, normalise_query


@pytest.mark.parametrize(
    "variant",
    ["How do vaccines work?", "how do VACCINES work", "  how do\tvaccines   work ?!",
     "ｈｏｗ ｄｏ vaccines work"],
)  # fmt: skip
def test_case_space_punctuation_and_unicode_width_do_not_change_the_key(variant: str) -> None:
    assert normalise_query(variant) == "how do vaccines work"


def test_everything_besides_the_query_is_in_the_key() -> None:
    context = {"table": "docs", "version": 3, "stages": [["m", 20, None, "head"]], "top_k": 10}
    key = cache_key("how do vaccines work", context_digest(context))

    for change in ({"version": 4}, {"top_k": 5}, {"stages": [["m", 10, None, "head"]]}):
        assert cache_key("how do vaccines work", context_digest({**context, **change})) != key
    assert cache_key("how do vaccines work", context_digest(dict(reversed(context.items())))) == key
