"""The result cache's key: the normalised query and everything else that changes the answer.

The context is the plan with what does not change the answer left out (the request's id,
reply subject, priority, deadline, whether texts are returned): the retrieval (table and
its version, filter, mode, fusion, embedder, candidate count), every stage (model, depth or
`auto` with its policy, token budget, MaxP windows, pair length) and `top_k`. A new table
version (any re-index) gives new keys, so nothing cached before it is served after it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

from rankstream.planning.plan import CacheKey, QueryPlan

PUNCTUATION = re.compile(r"[^\w\s]+", re.UNICODE)
SPACES = re.compile(r"\s+", re.UNICODE)
# The plan's fields that change an answer.
ANSWER_FIELDS = {"top_k", "retrieval", "stages"}


def normalise_query(text: str) -> str:
    """What makes two queries the same question: NFKC, case folded, without punctuation,
    single spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return SPACES.sub(" ", PUNCTUATION.sub(" ", folded)).strip()


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
