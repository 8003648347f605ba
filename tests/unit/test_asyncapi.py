"""The message contract, as FastStream documents it from the handlers (AsyncAPI 3)."""

from __future__ import annotations

from rankstream.config import Settings
from rankstream.workers.spec import asyncapi_spec


def test_the_spec_documents_every_subject_and_every_message() -> None:
    spec = asyncapi_spec(Settings(subject_prefix="acme"))
    addresses = {channel["address"] for channel in spec["channels"].values()}
    assert {"acme.queries", "acme.candidates", "acme.results.{client_id}"} <= addresses
    schemas = set(spec["components"]["schemas"])
    assert {
        "QueryRequest",
        "CandidateSet",
        "RankedResult",
        "ErrorResult",
        "StageTimings",
    } <= schemas


def test_the_query_request_schema_carries_its_version_and_limits() -> None:
    schema = asyncapi_spec(Settings())["components"]["schemas"]["QueryRequest"]
    assert schema["properties"]["schema_version"]["const"] == 2
    assert "depth" not in schema["properties"], "a cascade has one spelling: stages"
    assert schema["properties"]["top_k"]["minimum"] == 1
    assert "reply_to" in schema["required"]
