"""The result cache's key: the normalised query and everything else that changes the answer.

The context is the plan with what does not change the answer left out (the request's id,
reply subject, priority, deadline, whether texts are returned): the retrieval (table and
its version, filter, mode, fusion, embedder, candidate count), every stage (model, depth or
`auto` with its policy, token budget, MaxP windows, pair length, interpolation weight),
`top_k` and the profile the plan came from. A new table
version (any re-index) gives new keys, so nothing cached before it is served after it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

from rankstream.planning.plan import CacheKey, QueryPlan

# Quotes around a word: the BM25 list reads words only (no phrase search), so they mark
# nothing the answer depends on. Apostrophes inside a word ("don't") stay.
QUOTES = "\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb"
# Punctuation that ends a clause or a sentence when it ends a word ("work?", "vaccines,").
CLAUSE_END = re.compile(r"[.,;:!?\u2026]+$")
# The plan's fields that change an answer.
ANSWER_FIELDS = {"top_k", "retrieval", "stages", "profile"}


def normalise_query(text: str) -> str:
    """What makes two queries the same question (the query's part of the cache key).

    Merged: Unicode compatibility forms (NFKC: full-width letters, ligatures), case
    (casefold), runs of white space, quotes around a word, and the punctuation that ends a
    clause or a sentence at the end of a word (`.` `,` `;` `:` `!` `?` `…`, so "work?" and
    "work ?!" are "work"): none of them changes the question.

    Kept: everything inside a word and at its start, since there it changes the meaning:
    "C++" is not "C", "C#" not "C", "-5" not "5", "3.14" not "3 14" (a decimal point is
    inside the word), "e-mail" not "e mail", "(a)" not "a". A query that is nothing but
    punctuation keeps its punctuation ("?" is not "!"). Two queries whose words differ
    (after the merging above) never share a key: a miss costs a search, a wrong merge
    serves another question's answer.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    words = [_bare_word(word) for word in folded.split()]
    kept = [word for word in words if word]
    return " ".join(kept) if kept else " ".join(folded.split())


def _bare_word(word: str) -> str:
    """A word without its surrounding quotes and its clause-ending punctuation."""
    previous = None
    while word != previous:  # '"work?"' and 'work?"' alike
        previous = word
        word = CLAUSE_END.sub("", word.strip(QUOTES))
    return word


def context_digest(context: dict[str, Any]) -> str:
    """A short name for everything besides the query that changes the answer."""
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def cache_key(normalised_query: str, context: str) -> str:
    query = hashlib.sha256(normalised_query.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{context}.{query}"


def key_for(plan: QueryPlan) -> CacheKey:
    """Where `plan`'s answer is cached."""
    context = plan.model_dump(mode="json", include=ANSWER_FIELDS)
    digest = context_digest(context)
    query = normalise_query(plan.query)
    return CacheKey(key=cache_key(query, digest), context=digest, query=query)
