"""Plans for tests that publish candidate sets themselves, as a retrieval worker with the
same settings would make them."""

from __future__ import annotations

from rankstream.config import Settings
from rankstream.planning.adaptive_depth import DepthPolicy, DepthRule
from rankstream.planning.admission import Planner
from rankstream.planning.plan import QueryPlan
from rankstream.wire.contract import QueryRequest, now_ms

# A policy for tests of depth `auto` (none ships with the package): a clear dense winner
# gets a shallow rerank.
TEST_DEPTH_POLICY = DepthPolicy(
    "dense_margin",
    (DepthRule(0.1, 10), DepthRule(0.0, 30)),
    fallback=20,
    about={"calibrated_on": "nothing: the tests' own policy"},
)


def plan_for(settings: Settings, request: QueryRequest, embedder_model: str = "test") -> QueryPlan:
    """`request`'s plan, admitted now, with no cache key and `auto` left unresolved."""
    return Planner.from_settings(settings).plan_query(
        request.model_copy(update={"cache": False}),
        received_at_ms=now_ms(),
        embedder_model=embedder_model,
        table_version=None,
    )
