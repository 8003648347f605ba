"""Which model a rerank stage's scorer name stands for, from the settings: the one place
that reads a scorer name. Loading the model is `rankstream.models.registry`'s job."""

from __future__ import annotations

from rankstream.config import Settings
from rankstream.errors import InvalidRequestError

PACKAGED_PREFIX = "packaged:"
MINILM_RERANKER_INT8 = "ms-marco-MiniLM-L-12-v2-int8"
MINILM_RERANKER_FP32 = "ms-marco-MiniLM-L-12-v2-fp32"
CROSS_ENCODER_SCORER = "ce"
STUDENT_SCORER = "student"
MAXSIM_SCORER = "maxsim"


def scorer_models(settings: Settings) -> dict[str, str | None]:
    """Every scorer name and its model (None: not configured)."""
    return {
        CROSS_ENCODER_SCORER: settings.reranker_model,
        "ce-int8": PACKAGED_PREFIX + MINILM_RERANKER_INT8,
        "ce-fp32": PACKAGED_PREFIX + MINILM_RERANKER_FP32,
        STUDENT_SCORER: settings.student_model,
        MAXSIM_SCORER: settings.late_interaction_model,
    }


def scorer_model(settings: Settings, scorer: str) -> str:
    """The model a rerank stage's scorer name stands for: `ce` the configured reranker,
    `ce-int8` / `ce-fp32` the packaged cross-encoder in either precision, `student` the
    configured student (`settings.student_model`, e.g. what `rankstream distill` wrote),
    `maxsim` the late-interaction model (`settings.late_interaction_model`).

    Raises InvalidRequestError for a name the workers do not know, or for `student` /
    `maxsim` when their model is not configured."""
    models = scorer_models(settings)
    if scorer not in models:
        raise InvalidRequestError(f"unknown scorer {scorer!r}; known: {sorted(models)}")
    model = models[scorer]
    if model is None:
        setting = "STUDENT_MODEL" if scorer == STUDENT_SCORER else "LATE_INTERACTION_MODEL"
        raise InvalidRequestError(
            f"the {scorer} scorer has no model: run `rankstream distill` and set "
            f"RANKSTREAM_{setting} to the folder it wrote"
        )
    return model
