"""What makes two requests the same cached answer."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankstream.cache.keys import cache_key, context_digest, normalise_query


@pytest.mark.parametrize(
    "variant",
    ["How do vaccines work?", "how do VACCINES work", "  how do\tvaccines   work ?!",
     "ｈｏｗ ｄｏ vaccines work"],
)  # fmt: skip
def test_case_space_punctuation_and_unicode_width_do_not_change_the_key(variant: str) -> None:
    assert normalise_query(variant) == "how do vaccines work"


@pytest.mark.parametrize(
    ("query", "other"),
    [
        ("C++ memory safety", "C memory safety"),
        ("C# generics", "C generics"),
        ("-5 degrees", "5 degrees"),
        ("+1 for", "1 for"),
        ("3.14", "3 14"),
        ("3.14", "314"),
        ("e-mail", "e mail"),
        ("f(x)", "f x"),
        ("?", "!"),
    ],
)
def test_symbols_inside_a_word_keep_queries_apart(query: str, other: str) -> None:
    assert normalise_query(query) != normalise_query(other)


@pytest.mark.parametrize(
    ("query", "same"),
    [
        ('"how do vaccines work"', "how do vaccines work"),
        ("vaccines, how do they work?", "vaccines how do they work"),
        ("What is C++?", "what is c++"),
        ("Is -5 below zero...", "is -5 below zero"),
        ("“quoted” words", "quoted words"),
    ],
)
def test_quotes_and_clause_ending_punctuation_at_word_ends_do_not_change_the_key(
    query: str, same: str
) -> None:
    assert normalise_query(query) == normalise_query(same)


# Words as people type them: letters, digits and the symbols that carry meaning inside or at
# the start of a word (C++, C#, -5, e-mail, f(x)), joined inside by "." or "'" (3.14, don't).
SYMBOLS = "+#-*/%$&=<>^~@_()[]{}"
PIECES = st.text(alphabet=string.ascii_letters + string.digits + SYMBOLS, min_size=1, max_size=6)
WORDS = st.builds(str.join, st.sampled_from([".", "'"]), st.lists(PIECES, min_size=1, max_size=3))
SPACES = st.sampled_from([" ", "  ", "\t", "\n", " \u3000"])


def without_symbols(words: list[str]) -> list[str]:
    """What the old key read: each word's letters and digits only."""
    return [bare for word in words if (bare := re.sub(r"[^A-Za-z0-9]", "", word))]


@given(
    st.data(),
    st.lists(WORDS, min_size=1, max_size=6),
    SPACES,
    st.sampled_from(["", "?", " ?!", "."]),
)
def test_queries_share_a_key_exactly_when_their_words_match_but_for_case(
    data: st.DataObject, words: list[str], space: str, ending: str
) -> None:
    other_words = data.draw(
        st.one_of(
            st.just([word.swapcase() for word in words]),
            st.just(without_symbols(words)),
            st.lists(WORDS, min_size=1, max_size=6),
        )
    )
    same_words = [w.casefold() for w in words] == [w.casefold() for w in other_words]
    query, other = space.join(words) + ending, " ".join(other_words)
    assert (normalise_query(query) == normalise_query(other)) == same_words


def test_everything_besides_the_query_is_in_the_key() -> None:
    context = {"table": "docs", "version": 3, "stages": [["m", 20, None, "head"]], "top_k": 10}
    key = cache_key("how do vaccines work", context_digest(context))

    for change in ({"version": 4}, {"top_k": 5}, {"stages": [["m", 10, None, "head"]]}):
        assert cache_key("how do vaccines work", context_digest({**context, **change})) != key
    assert cache_key("how do vaccines work", context_digest(dict(reversed(context.items())))) == key
