"""What a request may ask for: the configurable limits both workers enforce."""

from __future__ import annotations

from rankstream.config import Settings
from rankstream.errors import InvalidRequestError
from rankstream.wire.messages import AUTO, CandidateSet, QueryRequest


def check_request(request: QueryRequest, settings: Settings) -> None:
    """Raise InvalidRequestError naming the first limit the request breaks."""
    if len(request.query) > settings.max_query_chars:
        raise InvalidRequestError(
            f"query has {len(request.query)} characters; the limit is {settings.max_query_chars}"
        )
    if not request.query.strip():
        raise InvalidRequestError("query is blank")
    depths = [("top_k", request.top_k)] + [
        (f"stage {stage.name}", stage.depth) for stage in request.rerank_stages()
    ]
    for name, value in depths:
        if value != AUTO and value > settings.max_depth:
            raise InvalidRequestError(f"{name} {value} exceeds max_depth {settings.max_depth}")


def check_candidates(candidate_set: CandidateSet, settings: Settings) -> None:
    check_request(candidate_set.request, settings)
    if len(candidate_set.candidates) > settings.max_depth:
        raise InvalidRequestError(
            f"{len(candidate_set.candidates)} candidates exceed max_depth {settings.max_depth}"
        )
