"""Admission: what plan a request becomes, and what it is refused for before any work."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rankstream.cache.keys import key_for
from rankstream.config import Settings
from rankstream.errors import InvalidRequestError, RequestTooLargeError
from rankstream.planning.adaptive_depth import DepthPolicy, DepthRule
from rankstream.planning.admission import CLOCK_SKEW_MS, Planner
from rankstream.planning.plan import QueryPlan
from rankstream.planning.profile import Profile, load_profile, served_profile
from rankstream.planning.scorers import PACKAGED_PREFIX
from rankstream.wire.contract import QueryRequest, RerankDocument, RerankRequest, RerankStage
from rankstream.wire.handoff import CandidateSet, brought_candidates
from rankstream.wire.pipeline import PipelineSpec
from tests.plans import TEST_DEPTH_POLICY

NOW = 1_800_000_000_000.0
POLICY = DepthPolicy("dense_margin", (DepthRule(0.1, 10), DepthRule(0.0, 30)), fallback=20)


def planner(**settings: object) -> Planner:
    return Planner(Settings.model_validate(settings), POLICY)


def query(**fields: object) -> QueryRequest:
    return QueryRequest.model_validate(
        {
            "query": "why is the sky blue",
            "reply_to": "rankstream.results.c1",
            "created_at_ms": NOW,
            **fields,
        }
    )


def plan_of(request: QueryRequest, **settings: object) -> QueryPlan:
    return planner(**settings).plan_query(
        request, received_at_ms=NOW, embedder_model="e", table_version=7
    )


def stages(*names: str) -> list[RerankStage]:
    """Stages from `scorer@depth` names (no budget)."""
    return [
        RerankStage(scorer=name.split("@")[0], depth=int(d) if (d := name.split("@")[1]) != "auto"
                    else "auto")
        for name in names
    ]  # fmt: skip


def test_retrieval_fetches_enough_candidates_for_the_first_stage_and_top_k() -> None:
    assert plan_of(query(top_k=5, stages=stages("ce@20"))).retrieval.count == 20  # type: ignore[union-attr]
    assert plan_of(query(top_k=10, stages=[])).retrieval.count == 10  # type: ignore[union-attr]
    auto = plan_of(query(top_k=10, stages=stages("ce@auto")), max_auto_depth=50)
    assert auto.retrieval is not None
    assert auto.retrieval.count == 50


def test_a_request_without_stages_gets_the_workers_default_cascade() -> None:
    plan = plan_of(query(), default_depth=15, default_retrieval="hybrid")
    assert [(s.scorer, s.depth) for s in plan.stages] == [("ce", 15)]
    assert plan.retrieval is not None
    assert plan.retrieval.mode == "hybrid"
    assert plan.retrieval.fusion is not None
    assert plan_of(query(stages=[])).stages == ()


def test_each_stage_carries_its_model_budget_and_windows_resolved_from_the_settings() -> None:
    plan = plan_of(
        query(stages=[RerankStage(depth=30), RerankStage(scorer="ce-fp32", depth=10,
                                                         max_doc_tokens=64, long_docs="maxp")]),
        default_max_doc_tokens=256, maxp_max_windows=3,
    )  # fmt: skip
    first, second = plan.stages
    assert (first.model, first.max_doc_tokens, first.long_docs) == (
        Settings().reranker_model,
        256,
        "head",
    )
    assert (second.model, second.max_doc_tokens, second.long_docs) == (
        PACKAGED_PREFIX + "ms-marco-MiniLM-L-12-v2-fp32",
        64,
        "maxp",
    )
    assert plan.max_pairs == 30 + 10 * 3


def test_an_unknown_scorer_is_refused_at_admission() -> None:
    with pytest.raises(InvalidRequestError, match="unknown scorer"):
        plan_of(query(stages=stages("no-such-model@5")))


def test_a_stage_after_auto_may_not_ask_for_more_than_auto_can_choose() -> None:
    with pytest.raises(InvalidRequestError, match="as few as 10"):
        plan_of(query(stages=stages("ce@auto", "ce@40")))
    assert len(plan_of(query(stages=stages("ce@auto", "ce@10"))).stages) == 2


def test_resolving_auto_narrows_later_stages_and_zero_reranks_nothing() -> None:
    plan = plan_of(query(stages=stages("ce@auto", "ce@10")), max_auto_depth=50)
    assert (plan.stages[0].auto, plan.stages[0].depth) == (True, 50)
    resolved = plan.with_first_depth(8)
    assert [(s.auto, s.depth) for s in resolved.stages] == [(False, 8), (False, 8)]
    assert plan.with_first_depth(0).stages == ()


def test_a_plan_over_the_pair_cap_is_refused_maxp_windows_counted() -> None:
    bounded = {"max_request_pairs": 100, "max_inflight_pairs": 100, "maxp_max_windows": 4}
    assert plan_of(query(stages=stages("ce@100")), **bounded).max_pairs == 100
    with pytest.raises(RequestTooLargeError, match="MAX_REQUEST_PAIRS"):
        plan_of(query(stages=[RerankStage(depth=30, max_doc_tokens=64, long_docs="maxp")]),
                **bounded)  # fmt: skip
    with pytest.raises(RequestTooLargeError, match="at most 100"):
        plan_of(query(stages=stages("maxsim@60", "ce@60")), late_interaction_model="m", **bounded)


def test_the_pair_cap_can_never_exceed_what_a_worker_holds() -> None:
    with pytest.raises(ValueError, match="could never be admitted"):
        Settings(max_request_pairs=4096, max_inflight_pairs=2048)


def test_a_timeout_over_the_maximum_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="max_timeout_ms"):
        plan_of(query(timeout_ms=10**12), max_timeout_ms=600_000)


def test_a_client_clock_far_ahead_is_replaced_by_the_receive_time() -> None:
    ahead = plan_of(query(created_at_ms=NOW + 10 * CLOCK_SKEW_MS, timeout_ms=5_000))
    assert ahead.created_at_ms == NOW
    assert ahead.deadline_ms == NOW + 5_000
    slightly = plan_of(query(created_at_ms=NOW + 1_000))
    assert slightly.created_at_ms == NOW + 1_000
    late = plan_of(query(created_at_ms=NOW - 3_600_000, timeout_ms=5_000))
    assert late.deadline_ms < NOW, "a request that waited past its deadline stays expired"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"query": "   "}, "blank"),
        ({"query": "x" * 3000}, "MAX_QUERY_CHARS"),
        ({"top_k": 5000}, "max_depth"),
        ({"stages": stages("ce@5000")}, "max_depth"),
    ],
)
def test_requests_over_a_bound_are_refused(fields: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        plan_of(query(**fields))


def rerank_request(count: int, **fields: object) -> RerankRequest:
    documents = [RerankDocument(text=f"document {i}") for i in range(count)]
    return RerankRequest.model_validate(
        {
            "query": "q",
            "documents": documents,
            "reply_to": "rankstream.results.c1",
            "created_at_ms": NOW,
            **fields,
        }
    )


def test_brought_candidates_make_a_plan_with_no_retrieval() -> None:
    plan = planner().plan_rerank(rerank_request(7, top_n=3), received_at_ms=NOW)
    assert plan.retrieval is None
    assert plan.cache is None
    assert [(s.scorer, s.depth) for s in plan.stages] == [("ce", 7)]
    assert plan.top_k == 3
    deeper = planner().plan_rerank(rerank_request(3, stages=stages("ce@20")), received_at_ms=NOW)
    assert deeper.first_depth == 3, "a stage never asks for more documents than were brought"


def test_more_brought_documents_than_max_depth_are_too_large() -> None:
    with pytest.raises(RequestTooLargeError, match="MAX_DEPTH"):
        planner(max_depth=5).plan_rerank(rerank_request(6), received_at_ms=NOW)


def test_a_rerank_worker_refuses_a_plan_made_for_another_model() -> None:
    plan = planner(reranker_model="/models/other").plan_rerank(
        rerank_request(2), received_at_ms=NOW
    )
    request = rerank_request(2)
    candidates = CandidateSet(plan=plan, candidates=brought_candidates(request))
    with pytest.raises(InvalidRequestError, match="same model settings"):
        planner().check_executable(candidates)
    planner(reranker_model="/models/other").check_executable(candidates)


def test_the_cache_key_changes_with_what_changes_the_answer_only() -> None:
    base = plan_of(query(stages=stages("ce@10")))
    assert base.cache is not None
    same = plan_of(query(stages=stages("ce@10"), priority=900, reply_to="rankstream.results.c2",
                         return_documents=False, timeout_ms=1_000))  # fmt: skip
    assert same.cache == base.cache
    assert plan_of(query(query="WHY is the  sky blue?", stages=stages("ce@10"))).cache == base.cache
    for different in (
        query(stages=stages("ce@10"), top_k=3),
        query(stages=stages("ce@20")),
        query(stages=stages("ce-fp32@10")),
        query(stages=stages("ce@10"), retrieval="bm25"),
        query(stages=stages("ce@10"), filter="year >= 2020"),
        query(stages=stages("ce@10"), table="other"),
    ):
        assert plan_of(different).cache != base.cache, different
    newer = planner().plan_query(
        query(stages=stages("ce@10")), received_at_ms=NOW, embedder_model="e", table_version=8
    )
    assert newer.cache != base.cache, "a re-indexed table misses"


def test_no_cache_key_when_the_request_or_the_workers_turn_the_cache_off() -> None:
    assert plan_of(query(cache=False)).cache is None
    assert plan_of(query(), cache_ttl_s=0).cache is None
    plan = plan_of(query())
    assert plan.cache == key_for(plan.model_copy(update={"cache": None}))


def test_the_pair_cap_follows_a_smaller_worker_budget_unless_set() -> None:
    assert Settings(max_inflight_pairs=64).request_pair_cap == 64
    assert Settings(max_inflight_pairs=64, max_request_pairs=16).request_pair_cap == 16
    assert Settings().request_pair_cap == Settings().max_inflight_pairs


@pytest.mark.parametrize(
    "reply_to",
    [
        "$KV.RANKSTREAM_CACHE.0123abcd",  # a cache entry: the worker would overwrite it
        "rankstream.queries",  # a work queue: the answer would be taken for a request
        "rankstream.results",  # the root itself, not a client's subject under it
        "rankstream.resultsx.c1",
        "other.results.c1",  # another deployment's prefix
        "_INBOX.c1",
    ],
)
def test_a_reply_to_outside_this_prefixs_results_subjects_is_refused(reply_to: str) -> None:
    with pytest.raises(
        InvalidRequestError, match=r"reply_to .* is not under rankstream\.results\."
    ):
        plan_of(query(reply_to=reply_to))
    with pytest.raises(InvalidRequestError, match=r"not under rankstream\.results\."):
        planner().plan_rerank(rerank_request(2, reply_to=reply_to), received_at_ms=NOW)
    # A candidate set made elsewhere carries its plan: checked again before it is executed.
    plan = planner().plan_rerank(rerank_request(2), received_at_ms=NOW)
    forged = CandidateSet(
        plan=plan.model_copy(update={"reply_to": reply_to}),
        candidates=brought_candidates(rerank_request(2)),
    )
    with pytest.raises(InvalidRequestError, match=r"not under rankstream\.results\."):
        planner().check_executable(forged)


def test_two_stores_behind_one_prefix_never_share_a_cache_key() -> None:
    here = plan_of(query(), lancedb_uri="/srv/a/lancedb")
    there = plan_of(query(), lancedb_uri="s3://bucket/lancedb")
    assert here.cache is not None
    assert there.cache is not None
    assert here.cache.key != there.cache.key
    assert plan_of(query(), lancedb_uri="/srv/a/lancedb").cache == here.cache
    assert here.retrieval is not None
    assert "/srv" not in here.retrieval.store, "the plan names the store by a digest"


def test_auto_never_asks_for_more_than_max_depth() -> None:
    plan = plan_of(query(top_k=5, stages=stages("ce@auto")), max_auto_depth=50, max_depth=8)
    assert plan.stages[0].depth == 8


def test_the_edge_refuses_what_admission_would_without_a_table() -> None:
    edge = Planner(Settings(max_request_pairs=24, max_inflight_pairs=24))
    for asked in ("nope@2", "student@2"):
        with pytest.raises(InvalidRequestError, match="scorer"):
            edge.check_bounds(query(stages=stages(asked)))
    too_many = [RerankStage(depth=4, max_doc_tokens=8, long_docs="maxp")] * 2
    with pytest.raises(RequestTooLargeError):
        edge.check_bounds(
            query(stages=[*too_many[:1], RerankStage(depth=3, max_doc_tokens=8, long_docs="maxp")])
        )
    with pytest.raises(InvalidRequestError, match="auto"):  # as a worker without a policy
        Planner(Settings(max_auto_depth=20)).check_bounds(query(stages=stages("ce@auto", "ce@8")))
    Planner(Settings(max_auto_depth=20), TEST_DEPTH_POLICY).check_bounds(
        query(stages=stages("ce@auto"))
    )


def served(profile: Profile, tmp_path: Path, **settings: object) -> Planner:
    path = tmp_path / f"{profile.digest}.json"
    path.write_text(profile.to_json(), encoding="utf-8")
    return Planner.from_settings(Settings.model_validate({"profile": path, **settings}))


TUNED = Profile(pipeline="hybrid~0.6+ce@30/best128~0.4", about={"fitted_on": "a test"})


def test_a_request_naming_no_pipeline_gets_the_profiles_plan(tmp_path: Path) -> None:
    plan = served(TUNED, tmp_path, cache_ttl_s=60).plan_query(
        query(), received_at_ms=NOW, embedder_model="e", table_version=7
    )

    assert plan.retrieval is not None
    assert plan.retrieval.fusion is not None
    assert (plan.retrieval.mode, plan.retrieval.fusion.method) == ("hybrid", "convex")
    assert plan.retrieval.fusion.dense_weight == pytest.approx(0.6)
    (stage,) = plan.stages
    assert (stage.depth, stage.long_docs, stage.max_doc_tokens, stage.interpolate) == (
        30, "best", 128, 0.4,
    )  # fmt: skip
    assert plan.profile == TUNED.digest


def test_the_profile_is_part_of_the_cache_key(tmp_path: Path) -> None:
    other = Profile(pipeline="hybrid~0.6+ce@30/best128~0.5")

    def key(planner: Planner) -> str | None:
        plan = planner.plan_query(query(), received_at_ms=NOW, embedder_model="e", table_version=7)
        return plan.cache.key if plan.cache else None

    keys = {
        key(served(TUNED, tmp_path, cache_ttl_s=60)),
        key(served(other, tmp_path, cache_ttl_s=60)),
        key(planner(cache_ttl_s=60)),
    }
    assert None not in keys
    assert len(keys) == 3


def test_a_request_naming_its_pipeline_is_planned_as_asked_beside_a_profile(
    tmp_path: Path,
) -> None:
    plan = served(TUNED, tmp_path).plan_query(
        query(**PipelineSpec.parse("dense+ce@5").request_fields()),
        received_at_ms=NOW,
        embedder_model="e",
        table_version=7,
    )
    assert plan.retrieval is not None
    assert plan.retrieval.mode == "dense"
    assert [s.depth for s in plan.stages] == [5]
    assert plan.profile is None


def test_a_request_naming_plain_hybrid_is_fused_by_rank_beside_a_hybrid_profile(
    tmp_path: Path,
) -> None:
    """`hybrid` without a weight asks for reciprocal rank fusion: the profile's convex weight
    goes only with the profile's mode (eval compares `hybrid` with `profile` on the same
    workers)."""
    served_planner = served(TUNED, tmp_path)

    def fusion(**fields: object) -> tuple[str, float]:
        plan = served_planner.plan_query(
            query(**fields), received_at_ms=NOW, embedder_model="e", table_version=7
        )
        assert plan.retrieval is not None
        assert plan.retrieval.fusion is not None
        return plan.retrieval.fusion.method, round(plan.retrieval.fusion.dense_weight, 6)

    assert fusion(**PipelineSpec.parse("hybrid+ce@5").request_fields()) == ("rrf", 1.0)
    assert fusion(retrieval="hybrid") == ("rrf", 1.0)  # the profile's cascade, not its fusion
    assert fusion(stages=[]) == ("convex", 0.6)  # the profile's mode and weight
    assert fusion(retrieval="hybrid", fusion_weight=0.3) == ("convex", 0.3)


def test_a_profile_that_cannot_serve_is_refused_when_loaded(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    for text, complaint in [
        ("not json", "Invalid JSON"),
        ('{"pipeline": "sparse"}', "not a retrieval mode"),
        ('{"pipeline": "dense+ce@auto"}', "depth policy"),
        ('{"pipeline": "dense+ce@auto", "depth_policy": {"rules": 3}}', "not a depth policy"),
        ('{"pipeline": "dense", "extra": 1, "about": 2}', "extra: Extra inputs"),
    ]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(InvalidRequestError, match=complaint) as refused:
            load_profile(path)
        message = str(refused.value)
        assert message.startswith(f"profile {path}: ")  # what `up` and `worker` print
        assert "\n" not in message
    with pytest.raises(InvalidRequestError, match=f"profile {tmp_path / 'none.json'}: "):
        load_profile(tmp_path / "none.json")


def test_a_profile_fitted_with_another_embedder_is_refused_and_another_scorer_model_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tuned.json"
    about = {"embedder_model": "packaged:bge-small-en-v1.5", "scorer": "ce",
             "scorer_model": "packaged:ms-marco-MiniLM-L-12-v2-fp32"}  # fmt: skip
    path.write_text(Profile(pipeline="hybrid~0.7+ce@30", about=about).to_json())

    with pytest.raises(InvalidRequestError, match="RANKSTREAM_EMBEDDER_MODEL=packaged:bge"):
        served_profile(Settings(profile=path))  # the default embedder is MiniLM

    served = Settings(profile=path, embedder_model="packaged:bge-small-en-v1.5")
    with caplog.at_level(logging.WARNING, logger="rankstream.planning.profile"):
        assert served_profile(served) is not None
    assert "fitted with packaged:ms-marco-MiniLM-L-12-v2-fp32 as its ce scorer" in caplog.text


def test_auto_is_refused_without_a_fitted_policy() -> None:
    with pytest.raises(InvalidRequestError, match="auto"):
        Planner(Settings()).plan_query(
            query(stages=stages("ce@auto")), received_at_ms=NOW, embedder_model="e", table_version=7
        )


def test_a_fusion_weight_with_a_single_list_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="fusion_weight"):
        planner(default_retrieval="dense").plan_query(
            query(fusion_weight=0.5), received_at_ms=NOW, embedder_model="e", table_version=7
        )
