"""A compact notation for a pipeline: the retrieval mode, then a cascade of rerank stages.

    PIPELINE := MODE [ "+" STAGE { ">" STAGE } ]
    MODE     := dense | bm25 | hybrid
    STAGE    := SCORER "@" DEPTH [ "/doc" N | "/maxp" N ]
    DEPTH    := N | auto

`SCORER` is what the rerank worker scores with: `ce` (the configured cross-encoder),
`ce-int8`, `ce-fp32`, or another scorer it knows. `/docN` gives the stage a document token
budget of N (head kept); `/maxpN` scores windows of N tokens and keeps the best. Examples:
`hybrid`, `dense+ce@20`, `dense+ce@20/doc256`, `hybrid+ce@auto`, `hybrid+ce@100/doc64>ce@20`.

`rankstream eval --configs`, `rankstream query --pipeline` and the gateway read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from rankstream.errors import InvalidRequestError
from rankstream.wire.contract import AUTO, Depth, QueryRequest, RerankStage, RetrievalMode

MODES = ("dense", "bm25", "hybrid")
STAGE = re.compile(
    r"^(?P<scorer>[a-z0-9][a-z0-9_-]*)@(?P<depth>[0-9]+|auto)(?:/(?P<kind>doc|maxp)(?P<tokens>[0-9]+))?$"
)


@dataclass(frozen=True)
class PipelineSpec:
    mode: RetrievalMode
    stages: tuple[RerankStage, ...] = ()

    @classmethod
    def parse(cls, text: str) -> PipelineSpec:
        """Raises InvalidRequestError naming the part that does not parse."""
        mode, _, cascade = text.strip().partition("+")
        if mode not in MODES:
            raise InvalidRequestError(
                f"pipeline {text!r}: {mode!r} is not a retrieval mode ({', '.join(MODES)})"
            )
        stages = tuple(_stage(part, text) for part in cascade.split(">")) if cascade else ()
        spec = cls(cast(RetrievalMode, mode), stages)
        spec.request_fields()  # a cascade that widens is refused here, not at the worker
        return spec

    @property
    def name(self) -> str:
        if not self.stages:
            return self.mode
        return f"{self.mode}+" + ">".join(stage.name for stage in self.stages)

    def request_fields(self) -> dict[str, Any]:
        """The `QueryRequest` fields that ask for this pipeline."""
        fields: dict[str, Any] = {"retrieval": self.mode, "stages": list(self.stages)}
        try:
            QueryRequest(query="check", reply_to="check", **fields)
        except ValueError as error:
            raise InvalidRequestError(f"pipeline {self.name!r}: {error}") from error
        return fields


def _stage(part: str, text: str) -> RerankStage:
    match = STAGE.match(part)
    if match is None:
        raise InvalidRequestError(
            f"pipeline {text!r}: stage {part!r} is not SCORER@DEPTH[/docN|/maxpN]"
        )
    depth: Depth = AUTO if match["depth"] == AUTO else int(match["depth"])
    tokens = int(match["tokens"]) if match["tokens"] else None
    try:
        return RerankStage(
            scorer=match["scorer"],
            depth=depth,
            max_doc_tokens=tokens,
            long_docs=("maxp" if match["kind"] == "maxp" else "head") if tokens else None,
        )
    except ValueError as error:
        raise InvalidRequestError(f"pipeline {text!r}: stage {part!r}: {error}") from error
