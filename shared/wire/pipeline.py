"""A compact notation for a pipeline: the retrieval mode, then a cascade of rerank stages.

    PIPELINE := MODE [ "+" STAGE { ">" STAGE } ]
    MODE     := dense | bm25 | hybrid [ "~" W ]
    STAGE    := SCORER "@" DEPTH [ "/doc" N | "/maxp" N | "/best" N ] [ "~" W ]
    DEPTH    := N | auto
    W        := a weight in [0, 1], at most 4 decimals: 0.7, 0.35, 1

`hybrid` fuses by reciprocal rank; `hybrid~W` by a convex combination of normalised scores
with weight W on dense (rankstream.retrieval.fusion). `SCORER` is what the rerank worker
scores with: `ce` (the configured cross-encoder), `ce-int8`, `ce-fp32`, or another scorer
it knows. `/docN` gives the stage a document token budget of N (head kept); `/maxpN` scores
windows of N tokens and keeps the best; `/bestN` scores only the window of N tokens that
holds the most query tokens (query-aware pruning: one pair a document, as `/docN`). A
stage's `~W` blends its model's score with the previous order's (rankstream.ranking). Examples:
`hybrid`, `hybrid~0.6`, `dense+ce@20`, `dense+ce@20/doc256`, `hybrid+ce@auto`,
`hybrid+ce@100/doc64>ce@20`, `hybrid~0.6+ce@30/best128~0.5`.

`rankstream eval --configs`, `rankstream query --pipeline` and the gateway read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from rankstream.errors import InvalidRequestError
from rankstream.wire.contract import (
    AUTO,
    Depth,
    LongDocuments,
    QueryRequest,
    RerankStage,
    RetrievalMode,
    weight_text,
)

MODES = ("dense", "bm25", "hybrid")
WEIGHT = r"(?:~(?P<weight>[0-9]+(?:\.[0-9]{1,4})?))?"
MODE = re.compile(rf"^(?P<mode>[a-z0-9]+){WEIGHT}$")
STAGE = re.compile(
    r"^(?P<scorer>[a-z0-9][a-z0-9_-]*)@(?P<depth>[0-9]+|auto)"
    rf"(?:/(?P<kind>doc|maxp|best)(?P<tokens>[0-9]+))?{WEIGHT}$"
)
LONG_DOCS: dict[str, LongDocuments] = {"doc": "head", "maxp": "maxp", "best": "best"}


@dataclass(frozen=True)
class PipelineSpec:
    mode: RetrievalMode
    stages: tuple[RerankStage, ...] = ()
    fusion_weight: float | None = None  # hybrid~W: convex fusion with W on dense

    @classmethod
    def parse(cls, text: str) -> PipelineSpec:
        """Raises InvalidRequestError naming the part that does not parse."""
        head, _, cascade = text.strip().partition("+")
        match = MODE.match(head)
        if match is None or match["mode"] not in MODES:
            raise InvalidRequestError(
                f"pipeline {text!r}: {head!r} is not a retrieval mode ({', '.join(MODES)}, "
                "hybrid~W)"
            )
        stages = tuple(_stage(part, text) for part in cascade.split(">")) if cascade else ()
        weight = float(match["weight"]) if match["weight"] is not None else None
        spec = cls(cast(RetrievalMode, match["mode"]), stages, weight)
        spec.request_fields()  # a cascade that widens is refused here, not at the worker
        return spec

    @property
    def name(self) -> str:
        head = str(self.mode)
        if self.fusion_weight is not None:
            head = f"{head}~{weight_text(self.fusion_weight)}"
        if not self.stages:
            return head
        return f"{head}+" + ">".join(stage.name for stage in self.stages)

    @property
    def first_stage(self) -> PipelineSpec:
        """The retrieval alone (mode and fusion), without its rerank stages."""
        return PipelineSpec(self.mode, (), self.fusion_weight)

    def request_fields(self) -> dict[str, Any]:
        """The `QueryRequest` fields that ask for this pipeline."""
        fields: dict[str, Any] = {"retrieval": self.mode, "stages": list(self.stages)}
        if self.fusion_weight is not None:
            fields["fusion_weight"] = self.fusion_weight
        try:
            QueryRequest(query="check", reply_to="check", **fields)
        except ValidationError as error:
            reason = str(error.errors()[0].get("msg", "invalid")).removeprefix("Value error, ")
            raise InvalidRequestError(f"pipeline {self.name!r}: {reason}") from error
        except ValueError as error:
            raise InvalidRequestError(f"pipeline {self.name!r}: {error}") from error
        return fields


def _stage(part: str, text: str) -> RerankStage:
    match = STAGE.match(part)
    if match is None:
        raise InvalidRequestError(
            f"pipeline {text!r}: stage {part!r} is not SCORER@DEPTH[/docN|/maxpN|/bestN][~W]"
        )
    depth: Depth = AUTO if match["depth"] == AUTO else int(match["depth"])
    tokens = int(match["tokens"]) if match["tokens"] else None
    try:
        return RerankStage(
            scorer=match["scorer"],
            depth=depth,
            max_doc_tokens=tokens,
            long_docs=LONG_DOCS[match["kind"]] if tokens else None,
            interpolate=float(match["weight"]) if match["weight"] is not None else None,
        )
    except ValueError as error:
        raise InvalidRequestError(f"pipeline {text!r}: stage {part!r}: {error}") from error
