"""Property tests over every public input's parsing, pure and fast: the filter grammar, the
pipeline grammar, the wire requests' validation and admission. Whatever comes in, the answer
is a value that reads back as itself or the one documented error, never another exception.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rankstream.config import Settings
from rankstream.errors import InvalidRequestError
from rankstream.planning.admission import Planner
from rankstream.wire.contract import QueryRequest, RerankDocument, RerankRequest
from rankstream.wire.filters import FilterError, parse_filter
from rankstream.wire.pipeline import PipelineSpec
from tests.fuzzing import mutated
from tests.plans import TEST_DEPTH_POLICY

EXAMPLES = 200
FUZZ = hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ANY_CHAR = st.characters(exclude_categories=())


def pieces_of(grammar: list[str]) -> st.SearchStrategy[str]:
    """Text mostly built from a grammar's own tokens, with arbitrary text between them, so
    both what parses and what nearly parses are drawn often."""
    piece = st.sampled_from(grammar) | st.text(ANY_CHAR, max_size=3)
    return st.lists(piece, max_size=12).map("".join)


# --- filters -------------------------------------------------------------------------------

FILTER_TOKENS = [
    " ", "topic", "year", "`year`", "`a b`", "=", "!=", "<>", "<", "<=", ">", ">=", " AND ",
    " OR ", "NOT ", " IN ", " NOT IN ", " IS ", " IS NOT ", "NULL", "TRUE", "false", "(", ")",
    ",", "'energy'", "'it''s'", "'", "''", "-", "3", "-2.5e3", "1.", "٣", ";", "--", "/*",
    "*/", "lower(", "DROP TABLE t", "\n", "\x00", "é", "😀",
]  # fmt: skip
COLUMN = st.sampled_from(["topic", "year", "`year`", "_x9", "Topic"])
LITERAL = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=6).map(
        lambda s: "'" + s.replace("'", "''") + "'"
    ),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:e}"),
    st.sampled_from(["TRUE", "FALSE", "true"]),
)
OPERATOR = st.sampled_from(["=", "!=", "<>", "<", "<=", ">", ">="])


def _comparison() -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(COLUMN, OPERATOR, LITERAL).map(" ".join),
        st.tuples(
            COLUMN, st.sampled_from(["IN", "NOT IN"]), st.lists(LITERAL, min_size=1, max_size=3)
        ).map(lambda t: f"{t[0]} {t[1]} ({', '.join(t[2])})"),
        st.tuples(COLUMN, st.sampled_from(["IS NULL", "IS NOT NULL"])).map(" ".join),
    )


GRAMMATICAL_FILTER = st.recursive(
    _comparison(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(" ".join),
        inner.map(lambda f: f"NOT {f}"),
        inner.map(lambda f: f"({f})"),
    ),
    max_leaves=8,
)
STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
# An identifier followed by "(": only these keywords may open a parenthesis (no function).
CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def _outside_strings(sql: str) -> str:
    return STRING_LITERAL.sub("''", sql)


@FUZZ
@given(text=pieces_of(FILTER_TOKENS) | GRAMMATICAL_FILTER | st.text(ANY_CHAR))
def test_any_filter_text_parses_to_sql_that_parses_to_itself_or_is_refused(text: str) -> None:
    try:
        parsed = parse_filter(text)
    except FilterError as error:
        refusal = str(error)
        assert refusal, "a refusal says why"
        return
    assert parse_filter(parsed.sql) == parsed
    code = _outside_strings(parsed.sql)
    assert ";" not in code, "a second statement"
    assert "--" not in code, "a comment"
    assert "/*" not in code, "a comment"
    assert {name.upper() for name in CALL.findall(code)} <= {"IN", "NOT", "AND", "OR"}, (
        "a function call"
    )
    assert parsed.columns, "a filter reads at least one column"


def test_grammatical_filters_are_drawn_often_enough_to_mean_something() -> None:
    parsed = 0

    @hypothesis_settings(max_examples=100, deadline=None, database=None)
    @given(text=GRAMMATICAL_FILTER)
    def count(text: str) -> None:
        nonlocal parsed
        try:
            parse_filter(text)
            parsed += 1
        except FilterError:
            pass

    count()
    print(f"\n{parsed} of 100 grammatical filters parsed")
    assert parsed >= 50


# --- pipelines -----------------------------------------------------------------------------

PIPELINE_TOKENS = [
    "dense", "bm25", "hybrid", "+", ">", "ce", "ce-int8", "ce-fp32", "student", "maxsim",
    "x_1", "@", "auto", "0", "5", "20", "007", "99999999999999999999", "/doc", "/maxp", "64",
    "8", " ", "٣", "Ce", "\n", "😀",
]  # fmt: skip


@FUZZ
@given(text=pieces_of(PIPELINE_TOKENS) | st.text(ANY_CHAR))
def test_any_pipeline_text_is_a_spec_whose_name_reads_back_as_it_or_is_refused(text: str) -> None:
    try:
        spec = PipelineSpec.parse(text)
    except InvalidRequestError as error:
        refusal = str(error)
        assert refusal, "a refusal says why"
        return
    assert PipelineSpec.parse(spec.name) == spec
    assert spec.request_fields()["retrieval"] == spec.mode


# --- wire requests -------------------------------------------------------------------------

JSONISH: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(ANY_CHAR, max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
STAGE_DICT = st.fixed_dictionaries(
    {},
    optional={
        "scorer": st.sampled_from(["ce", "ce-int8", "student", "nope", ""]),
        "depth": st.sampled_from([1, 5, 12, 13, 0, -1, "auto", "5"]),
        "max_doc_tokens": st.sampled_from([None, 8, 7, 64, 10**9]),
        "long_docs": st.sampled_from(["head", "maxp", "tail"]),
    },
)
TEXT = st.sampled_from(["heat pumps", "a.b"]) | st.text(ANY_CHAR, min_size=1, max_size=20)
WILD = JSONISH | st.sampled_from(["", " ", "q" * 401, 0, -1, 13, 1000, 10**30, "auto", "a b"])
COMMON = {
    "request_id": TEXT,
    "stages": st.lists(STAGE_DICT, max_size=4),
    "priority": st.integers(0, 999),
    "timeout_ms": st.integers(1, 600_000),
    "created_at_ms": st.floats(0, 1e13),
    "return_documents": st.booleans(),
}
REQUIRED = {"query": TEXT, "reply_to": st.sampled_from(["a.b", "p.results.c1"])}
QUERY_OPTIONAL = {
    **COMMON,
    "top_k": st.integers(1, 13),
    "retrieval": st.sampled_from(["dense", "bm25", "hybrid"]),
    "cache": st.booleans(),
    "table": st.sampled_from(["docs", "a-b", "t9"]),
    "filter": GRAMMATICAL_FILTER | pieces_of(FILTER_TOKENS),
}
DOCUMENT_DICT = st.fixed_dictionaries({"text": TEXT}, optional={"id": TEXT})
RERANK_OPTIONAL = {**COMMON, "top_n": st.integers(1, 14)}
QUERY_DICT = mutated(
    st.fixed_dictionaries(REQUIRED, optional=QUERY_OPTIONAL), [*REQUIRED, *QUERY_OPTIONAL], WILD
)
RERANK_DICT = mutated(
    st.fixed_dictionaries(
        {**REQUIRED, "documents": st.lists(DOCUMENT_DICT, min_size=1, max_size=14)},
        optional=RERANK_OPTIONAL,
    ),
    [*REQUIRED, "documents", *RERANK_OPTIONAL],
    WILD,
)


@pytest.mark.parametrize("model", [QueryRequest, RerankRequest])
def test_any_json_object_is_a_request_that_round_trips_on_the_wire_or_a_validation_error(
    model: type[QueryRequest] | type[RerankRequest],
) -> None:
    valid = 0

    @FUZZ
    @given(fields=QUERY_DICT if model is QueryRequest else RERANK_DICT)
    def check(fields: dict[str, Any]) -> None:
        nonlocal valid
        try:
            request = model.model_validate(fields)
        except ValidationError:
            return
        valid += 1
        assert model.model_validate_json(request.model_dump_json()) == request

    check()
    print(f"\n{model.__name__}: {EXAMPLES} cases, {valid} valid")


@pytest.mark.parametrize("model", [QueryRequest, RerankRequest])
@FUZZ
@given(raw=st.binary(max_size=64) | JSONISH.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_on_the_wire_are_a_request_or_a_validation_error(
    model: type[QueryRequest] | type[RerankRequest], raw: bytes
) -> None:
    with contextlib.suppress(ValidationError):
        model.model_validate_json(raw)


# --- admission -----------------------------------------------------------------------------

BOUNDS = Settings(max_depth=12, max_query_chars=400, max_request_pairs=30, max_timeout_ms=60_000)
PLANNER = Planner(BOUNDS, TEST_DEPTH_POLICY)


def _valid(model: type[QueryRequest] | type[RerankRequest]) -> st.SearchStrategy[Any]:
    fields = QUERY_DICT if model is QueryRequest else RERANK_DICT

    def parse(value: dict[str, Any]) -> Any:
        try:
            return model.model_validate(value)
        except ValidationError:
            return None

    return fields.map(parse).filter(lambda request: request is not None)  # most are valid


@FUZZ
@given(request=_valid(QueryRequest))
def test_any_valid_query_is_planned_or_refused_as_invalid(request: QueryRequest) -> None:
    try:
        plan = PLANNER.plan_query(
            request, received_at_ms=0.0, embedder_model="e", table_version=None
        )
    except InvalidRequestError:
        return
    assert plan.max_pairs <= BOUNDS.request_pair_cap
    PLANNER.check_bounds(request)  # what a worker plans, the edge lets through


@FUZZ
@given(request=_valid(RerankRequest))
def test_any_valid_rerank_request_is_planned_or_refused_as_invalid(request: RerankRequest) -> None:
    try:
        plan = PLANNER.plan_rerank(request, received_at_ms=0.0)
    except InvalidRequestError:
        return
    assert plan.max_pairs <= BOUNDS.request_pair_cap
    assert all(stage.depth <= len(request.documents) for stage in plan.stages)


@FUZZ
@example(
    request=RerankRequest(query="q", reply_to="a.b", documents=[RerankDocument(text="d")], top_n=13)
)
@given(request=_valid(RerankRequest))
def test_the_edge_admits_every_rerank_request_a_worker_plans(request: RerankRequest) -> None:
    try:
        PLANNER.plan_rerank(request, received_at_ms=0.0)
    except InvalidRequestError:
        return
    PLANNER.check_bounds(request)
