"""Depth `auto`: how many candidates to rerank, from the retrieval's own confidence.

A confident retrieval (a clear winner at the top, or dense and BM25 agreeing) gains little
from reranking deep; an unsure one gains most. The policy reads one feature of the search
(`retrieval_features`) and maps it to a depth through rules found by calibration on a train
split (`rankstream calibrate-depth`, never on the split that is reported): the first rule
whose threshold the feature reaches gives the depth; below every threshold, the last rule's
depth applies. Depths are capped by `max_auto_depth`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rankstream.errors import InvalidRequestError

FEATURES = ("dense_margin", "bm25_margin", "overlap")


def retrieval_features(
    dense_scores: Sequence[float], bm25_scores: Sequence[float], overlap_at_10: float | None
) -> dict[str, float]:
    """The confidence signals of one search: the cosine gap between the first two dense
    hits, the relative BM25 gap between the first two, and the share of the dense top 10
    in the BM25 top 10 (hybrid only). A signal the search cannot give is left out."""
    features: dict[str, float] = {}
    if len(dense_scores) >= 2:
        features["dense_margin"] = float(dense_scores[0] - dense_scores[1])
    if len(bm25_scores) >= 2 and bm25_scores[0] > 0:
        features["bm25_margin"] = float((bm25_scores[0] - bm25_scores[1]) / bm25_scores[0])
    if overlap_at_10 is not None:
        features["overlap"] = float(overlap_at_10)
    return features


@dataclass(frozen=True)
class DepthRule:
    min_confidence: float
    depth: int


@dataclass(frozen=True)
class DepthPolicy:
    """`rules` from the most confident down; `fallback` when the feature is missing."""

    feature: str
    rules: tuple[DepthRule, ...]
    fallback: int
    about: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.feature not in FEATURES:
            raise InvalidRequestError(f"unknown depth-policy feature {self.feature!r}")
        if not self.rules:
            raise InvalidRequestError("a depth policy needs at least one rule")

    def choose(self, features: dict[str, float], max_depth: int) -> tuple[int, float | None]:
        """(depth, the confidence it was chosen from)."""
        confidence = features.get(self.feature)
        if confidence is None:
            return min(self.fallback, max_depth), None
        for rule in self.rules:
            if confidence >= rule.min_confidence:
                return min(rule.depth, max_depth), confidence
        return min(self.rules[-1].depth, max_depth), confidence

    def fewest(self, max_depth: int) -> int:
        """The fewest candidates (above 0) it can choose; 0 when it never reranks."""
        depths = [min(d, max_depth) for d in (self.fallback, *(r.depth for r in self.rules))]
        return min((d for d in depths if d > 0), default=0)

    @property
    def digest(self) -> str:
        """A short name for the rules (the cache keys on it)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        document = {
            "feature": self.feature,
            "rules": [[rule.min_confidence, rule.depth] for rule in self.rules],
            "fallback": self.fallback,
            "about": self.about,
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DepthPolicy:
        try:
            document = json.loads(text)
            rules = tuple(DepthRule(float(c), int(d)) for c, d in document["rules"])
            return cls(
                document["feature"], rules, int(document["fallback"]), document.get("about", {})
            )
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidRequestError(f"not a depth policy: {error!r}") from error


def load_depth_policy(path: Path) -> DepthPolicy:
    """The policy at `path` (written by `rankstream calibrate-depth` or inside a profile by
    `rankstream tune`). No policy ships with the package: one fitted on another collection
    would choose depths for reasons that do not hold on yours.

    Raises:
        InvalidRequestError: the file cannot be read or is not a policy.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidRequestError(f"depth policy {path}: {error}") from error
    return DepthPolicy.from_json(text)
