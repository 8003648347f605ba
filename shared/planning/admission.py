"""Admission: a request becomes its plan here, once, and a request over any bound is refused
before any work is done.

Bounds (all settings): the query's length; `top_k` and every depth at most `max_depth`; the
pairs all stages may score together, MaxP windows included, at most `max_request_pairs`;
`timeout_ms` at most `max_timeout_ms`; a stage after `auto` at most the fewest candidates
the depth policy can choose; `reply_to` under `{prefix}.results.` (anywhere else, a request
could make a worker publish on the cache bucket or a work queue). A client clock ahead of the
worker's by more than `CLOCK_SKEW_MS` is not trusted: the deadline counts from when the
request was received.
"""

from __future__ import annotations

from dataclasses import dataclass

from rankstream.cache.keys import key_for
from rankstream.config import Settings
from rankstream.errors import InvalidRequestError, RequestTooLargeError
from rankstream.planning.adaptive_depth import DepthPolicy, load_depth_policy
from rankstream.planning.plan import Fusion, QueryPlan, RetrievalPlan, StagePlan, store_identity
from rankstream.planning.profile import Profile, load_profile
from rankstream.planning.scorers import scorer_model
from rankstream.wire.contract import AUTO, QueryRequest, RerankRequest, RerankStage, RetrievalMode
from rankstream.wire.filters import parse_filter
from rankstream.wire.handoff import CandidateSet
from rankstream.wire.subjects import Subjects

# How far ahead of a worker's clock a client's `created_at_ms` may be.
CLOCK_SKEW_MS = 60_000.0


@dataclass(frozen=True)
class Planner:
    """Resolves requests into plans with one worker's settings.

    Args:
        settings: defaults (retrieval mode, cascade, budgets) and bounds.
        depth_policy: what resolves depth `auto` (a retrieval worker's); None: `auto` is
            refused.
        profile: the served profile: its retrieval mode, fusion and cascade replace the
            settings' defaults for what a request leaves out.
    """

    settings: Settings
    depth_policy: DepthPolicy | None = None
    profile: Profile | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Planner:
        """The planner a worker serves with: the profile at `settings.profile` (its depth
        policy resolves `auto`), else the depth policy at `settings.auto_depth_policy`, else
        none (`auto` is refused).

        Raises:
            InvalidRequestError: the profile or the policy cannot be loaded (the message
                names the file).
        """
        if settings.profile is not None:
            profile = load_profile(settings.profile)
            return cls(settings, profile.policy, profile)
        if settings.auto_depth_policy is not None:
            return cls(settings, load_depth_policy(settings.auto_depth_policy))
        return cls(settings)

    def plan_query(
        self,
        request: QueryRequest,
        *,
        received_at_ms: float,
        embedder_model: str,
        table_version: int | None,
    ) -> QueryPlan:
        """The plan of a query: retrieval, then the cascade (the request's, or the default).

        Raises:
            InvalidRequestError: a bound is broken, a scorer unknown, the cascade ill-formed;
                RequestTooLargeError when it would score too many pairs.
        """
        settings = self.settings
        self._check_query(request.query)
        self._check_depth("top_k", request.top_k)
        stages = self._stages(self._cascade(request.stages))
        first = stages[0].depth if stages else 0
        mode = self._mode(request.retrieval)
        retrieval = RetrievalPlan(
            mode=mode,
            store=store_identity(settings.lancedb_uri),
            table=request.table or settings.table,
            table_version=table_version,
            filter=parse_filter(request.filter).sql if request.filter is not None else None,
            count=max(request.top_k, first),
            embedder=embedder_model,
            fusion=self._fusion(mode, request.fusion_weight, request.retrieval is None),
        )
        plan = self._plan(request, received_at_ms, request.top_k, retrieval, stages)
        if self.profile is not None and None in (request.retrieval, request.stages):
            plan = plan.model_copy(update={"profile": self.profile.digest})
        if request.cache and settings.cache_ttl_s > 0:
            plan = plan.model_copy(update={"cache": key_for(plan)})
        return plan

    def plan_rerank(self, request: RerankRequest, *, received_at_ms: float) -> QueryPlan:
        """The plan of a bring-your-own-candidates request: no retrieval; the cascade (by
        default `ce` over every document) over the documents in their order.

        Raises:
            InvalidRequestError: as `plan_query`; RequestTooLargeError for more documents
                than `max_depth` or more pairs than `max_request_pairs`.
        """
        self._check_query(request.query)
        count = len(request.documents)
        self._check_documents(count)
        self._check_depth("top_n", request.top_n or 0)
        asked = request.stages if request.stages is not None else [RerankStage(depth=count)]
        stages = tuple(
            s.model_copy(update={"depth": min(s.depth, count)}) for s in self._stages(asked)
        )
        return self._plan(request, received_at_ms, request.top_n or count, None, stages)

    def check_bounds(self, request: QueryRequest | RerankRequest) -> None:
        """Every bound a request can be checked against without a table or a model: what
        `plan_query` / `plan_rerank` would refuse (`auto` included: this planner's depth policy
        is the workers'), but for an unknown table or column. For an edge (the gateway) that
        refuses what no worker would take, before publishing it.

        Raises:
            InvalidRequestError: the first bound broken (RequestTooLargeError: documents,
                pairs).
        """
        if isinstance(request, RerankRequest):
            self.plan_rerank(request, received_at_ms=request.created_at_ms)
            return
        self._check_query(request.query)
        self._timeout(request.timeout_ms)
        self._check_depth("top_k", request.top_k)
        stages = self._stages(self._cascade(request.stages))
        self._check_pairs(sum(stage.max_pairs for stage in stages))

    def check_executable(self, candidate_set: CandidateSet) -> None:
        """Refuse a candidate set this worker cannot execute as planned: one over a bound
        (this worker's, checked again), or a stage whose model this worker does not serve
        (replicas configured with different models).

        Raises:
            InvalidRequestError: what is wrong, and what to change.
        """
        plan = candidate_set.plan
        self._check_reply_to(plan.reply_to)
        self._check_query(plan.query)
        self._check_depth("top_k", plan.top_k)
        self._timeout(plan.timeout_ms)
        count = len(candidate_set.candidates)
        if count > self.settings.max_depth:
            raise RequestTooLargeError(
                f"{count} candidates exceed max_depth {self.settings.max_depth}"
            )
        self._check_pairs(plan.max_pairs)
        for stage in plan.stages:
            self._check_depth(f"stage {stage.name}", stage.depth)
            served = scorer_model(self.settings, stage.scorer)
            if (stage.model, stage.max_length) != (served, self.settings.max_length):
                raise InvalidRequestError(
                    f"stage {stage.name} was planned with {stage.model} at max_length "
                    f"{stage.max_length}; this worker serves {served} at "
                    f"{self.settings.max_length}: run every worker with the same model settings"
                )
            if stage.auto:
                raise InvalidRequestError(f"stage {stage.name}: depth `auto` was not resolved")

    def _plan(
        self,
        request: QueryRequest | RerankRequest,
        received_at_ms: float,
        top_k: int,
        retrieval: RetrievalPlan | None,
        stages: tuple[StagePlan, ...],
    ) -> QueryPlan:
        """The plan of `request`, its reply subject, deadline and pairs bounded."""
        self._check_reply_to(request.reply_to)
        plan = QueryPlan(
            kind="query" if retrieval is not None else "rerank",
            request_id=request.request_id,
            query=request.query,
            reply_to=request.reply_to,
            top_k=top_k,
            priority=request.priority,
            return_documents=request.return_documents,
            created_at_ms=self._created_at(request.created_at_ms, received_at_ms),
            timeout_ms=self._timeout(request.timeout_ms),
            retrieval=retrieval,
            stages=stages,
        )
        self._check_pairs(plan.max_pairs)
        return plan

    def _cascade(self, asked: list[RerankStage] | None) -> list[RerankStage]:
        """The stages asked for, or the default cascade: the profile's, else
        `default_depth`'s (0: none)."""
        if asked is not None:
            return asked
        if self.profile is not None:
            return list(self.profile.spec.stages)
        depth = self.settings.default_depth
        return [] if depth == 0 else [RerankStage(depth=depth)]

    def _stages(self, asked: list[RerankStage]) -> tuple[StagePlan, ...]:
        stages = tuple(self._stage(stage) for stage in asked)
        if stages and stages[0].auto:
            self._check_after_auto(stages)
        return stages

    def _stage(self, stage: RerankStage) -> StagePlan:
        """`stage` as planned: `auto` needs a depth policy and is bounded by `max_auto_depth`."""
        settings = self.settings
        auto = stage.depth == AUTO
        depth = min(settings.max_auto_depth, settings.max_depth) if auto else int(stage.depth)
        self._check_depth(f"stage {stage.name}", depth)
        if auto and self.depth_policy is None:
            raise InvalidRequestError(
                f"stage {stage.name}: depth `auto` reads the retrieval's confidence; give a number"
            )
        return StagePlan(
            name=stage.name,
            scorer=stage.scorer,
            model=scorer_model(settings, stage.scorer),
            depth=depth,
            auto=auto,
            auto_policy=self.depth_policy.digest if auto and self.depth_policy else None,
            max_doc_tokens=stage.max_doc_tokens or settings.default_max_doc_tokens,
            long_docs=stage.long_docs or settings.default_long_docs,
            maxp_windows=settings.maxp_max_windows,
            max_length=settings.max_length,
            interpolate=stage.interpolate,
        )

    def _check_after_auto(self, stages: tuple[StagePlan, ...]) -> None:
        assert self.depth_policy is not None
        fewest = self.depth_policy.fewest(self.settings.max_auto_depth)
        for stage in stages[1:]:
            if stage.depth > fewest:
                raise InvalidRequestError(
                    f"stage {stage.name} follows {stages[0].name}, which may rerank as few as "
                    f"{fewest} candidates: give it a depth of at most {fewest}"
                )

    def _mode(self, asked: RetrievalMode | None) -> RetrievalMode:
        if asked is not None:
            return asked
        if self.profile is not None:
            return self.profile.spec.mode
        return self.settings.default_retrieval

    def _fusion(
        self, mode: RetrievalMode, asked_weight: float | None, profile_mode: bool
    ) -> Fusion | None:
        """Hybrid's fusion: the request's convex weight; else, where the mode is the
        profile's (`profile_mode`: the request named no retrieval), the profile's weight;
        else weighted reciprocal rank fusion with the settings' weights. A request that
        names `hybrid` without a weight asked for reciprocal rank fusion, profile or not."""
        settings = self.settings
        if mode != "hybrid":
            if asked_weight is not None:
                raise InvalidRequestError(
                    f"fusion_weight fuses hybrid lists; this request retrieves {mode}"
                )
            return None
        served = self.profile if profile_mode else None
        profile_weight = served.spec.fusion_weight if served is not None else None
        weight = asked_weight if asked_weight is not None else profile_weight
        if weight is not None:
            return Fusion.convex(weight, settings.hybrid_fusion_depth)
        return Fusion(
            dense_weight=settings.hybrid_dense_weight,
            bm25_weight=settings.hybrid_bm25_weight,
            depth=settings.hybrid_fusion_depth,
        )

    def _check_reply_to(self, reply_to: str) -> None:
        subjects = Subjects.from_settings(self.settings)
        if not subjects.is_results_subject(reply_to):
            raise InvalidRequestError(
                f"reply_to {reply_to!r} is not under {subjects.results_root}.: answers go only "
                f"to results subjects ({subjects.results_for('<client id>')})"
            )

    def _check_query(self, query: str) -> None:
        if not query.strip():
            raise InvalidRequestError("query is blank")
        if len(query) > self.settings.max_query_chars:
            raise InvalidRequestError(
                f"query has {len(query)} characters; the limit is {self.settings.max_query_chars} "
                "(RANKSTREAM_MAX_QUERY_CHARS)"
            )

    def _check_documents(self, count: int) -> None:
        if count > self.settings.max_depth:
            raise RequestTooLargeError(
                f"{count} documents; at most {self.settings.max_depth} per request "
                "(RANKSTREAM_MAX_DEPTH)"
            )

    def _check_depth(self, name: str, value: int) -> None:
        if value > self.settings.max_depth:
            raise InvalidRequestError(
                f"{name} {value} exceeds max_depth {self.settings.max_depth} (RANKSTREAM_MAX_DEPTH)"
            )

    def _check_pairs(self, pairs: int) -> None:
        limit = self.settings.request_pair_cap
        if pairs > limit:
            raise RequestTooLargeError(
                f"the cascade may score {pairs} pairs; at most {limit} per request "
                "(RANKSTREAM_MAX_REQUEST_PAIRS): lower a depth, or cut documents (/docN) "
                "instead of scoring windows (/maxpN)"
            )

    def _timeout(self, timeout_ms: int) -> int:
        if timeout_ms > self.settings.max_timeout_ms:
            raise InvalidRequestError(
                f"timeout_ms {timeout_ms} exceeds max_timeout_ms {self.settings.max_timeout_ms} "
                "(RANKSTREAM_MAX_TIMEOUT_MS)"
            )
        return timeout_ms

    @staticmethod
    def _created_at(created_at_ms: float, received_at_ms: float) -> float:
        """The client's clock, unless it runs ahead of this worker's beyond the allowance."""
        return created_at_ms if created_at_ms <= received_at_ms + CLOCK_SKEW_MS else received_at_ms
