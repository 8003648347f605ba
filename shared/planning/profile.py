"""A profile: the plan `rankstream tune` chose for one collection, served by default.

A profile is a JSON file with the chosen pipeline (in the pipeline grammar, its fitted
weights written in: `hybrid~0.62+ce@20/best128~0.45`), the depth policy fitted for `auto`
when the pipeline uses it, and `about`: the collection, the split it was fitted on, the
cost bound, the held-out figures, and the models it was fitted with (`embedder_model`,
`scorer_model`). Workers started with `RANKSTREAM_PROFILE` (or
`rankstream up --profile`) give its plan to every query that names no pipeline; the plan
records the profile's digest, which is part of the cache key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rankstream.config import Settings
from rankstream.errors import InvalidRequestError
from rankstream.planning.adaptive_depth import DepthPolicy
from rankstream.planning.scorers import scorer_models
from rankstream.wire.contract import AUTO
from rankstream.wire.pipeline import PipelineSpec

log = logging.getLogger(__name__)


class Profile(BaseModel):
    """A tuned plan for one collection.

    Args:
        pipeline: the plan, in the pipeline grammar (rankstream.wire.pipeline).
        depth_policy: the policy that resolves its first stage's `auto` depth (the JSON
            document of rankstream.planning.adaptive_depth.DepthPolicy); required exactly
            when that stage is `auto`.
        about: how it was fitted: collection, split, bound, held-out figures, and
            `embedder_model` / `scorer_model`, the models whose scores its weights were
            fitted on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str
    depth_policy: dict[str, Any] | None = None
    about: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pipeline")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            PipelineSpec.parse(value)
        except InvalidRequestError as error:  # not a ValueError: pydantic would let it through
            raise ValueError(str(error)) from error
        return value

    @property
    def spec(self) -> PipelineSpec:
        return PipelineSpec.parse(self.pipeline)

    @property
    def policy(self) -> DepthPolicy | None:
        if self.depth_policy is None:
            return None
        return DepthPolicy.from_json(json.dumps(self.depth_policy))

    @property
    def digest(self) -> str:
        """A short name for what changes an answer: the pipeline and the depth policy."""
        canonical = json.dumps([self.pipeline, self.depth_policy], sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def load_profile(path: Path) -> Profile:
    """The profile at `path`.

    Raises:
        InvalidRequestError: the file cannot be read, is not a profile, its pipeline does
            not parse, or its `auto` stage has no depth policy (or a policy it does not use).
            The message is one line and names the file; fix it or write it again with
            `rankstream tune`.
    """
    try:
        profile = Profile.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidRequestError(f"profile {path}: {error}") from error
    except ValidationError as error:
        raise InvalidRequestError(f"profile {path}: {_one_line(error)}") from error
    stages = profile.spec.stages
    uses_auto = bool(stages) and stages[0].depth == AUTO
    if uses_auto != (profile.depth_policy is not None):
        raise InvalidRequestError(
            f"profile {path}: a depth policy goes with a first stage of depth `auto`, and only "
            f"with one ({profile.pipeline!r})"
        )
    try:
        profile.policy  # noqa: B018 (a policy that does not load is refused here, not per query)
    except InvalidRequestError as error:
        raise InvalidRequestError(f"profile {path}: depth_policy: {error}") from error
    return profile


def served_profile(settings: Settings) -> Profile | None:
    """The profile `settings` serve (`settings.profile`), loaded before a process starts
    anything, so that a bad one stops `rankstream up`, `worker` or `gateway` at once.

    Raises:
        InvalidRequestError: as `load_profile` (one line, naming the file).
    """
    if settings.profile is None:
        return None
    profile = load_profile(settings.profile)
    _check_models(profile, settings)
    log.info(
        "serving profile %s to requests that name no pipeline: %s (digest %s)",
        settings.profile, profile.pipeline, profile.digest,
    )  # fmt: skip
    return profile


def _check_models(profile: Profile, settings: Settings) -> None:
    """Refuse a profile fitted with another embedder (its fusion weight and depth policy
    were fitted on that model's scores, and a table is searched with the model that indexed
    it); warn when its scorer now stands for another model."""
    fitted = profile.about.get("embedder_model")
    if fitted is not None and fitted != settings.embedder_model:
        raise InvalidRequestError(
            f"profile {settings.profile}: fitted with the embedder {fitted!r}, served with "
            f"{settings.embedder_model!r}: set RANKSTREAM_EMBEDDER_MODEL={fitted} (with a "
            "table indexed by it), or tune again with this embedder"
        )
    scorer, scorer_fitted = profile.about.get("scorer"), profile.about.get("scorer_model")
    if scorer is None or scorer_fitted is None:
        return
    serving = scorer_models(settings).get(str(scorer))
    if serving != scorer_fitted:
        log.warning(
            "profile %s was fitted with %s as its %s scorer; these workers score %s with %s: "
            "its interpolation weights may not suit it", settings.profile, scorer_fitted,
            scorer, scorer, serving,
        )  # fmt: skip


def _one_line(error: ValidationError) -> str:
    """Each problem as `field: message`, on one line (pydantic's own text takes several)."""
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "the document"
        # A validator's own ValueError, without pydantic's "Value error, " in front.
        cause = problem.get("ctx", {}).get("error") if problem["type"] == "value_error" else None
        problems.append(f"{where}: {cause if cause is not None else problem['msg']}")
    return "; ".join(" ".join(problem.split()) for problem in problems)
