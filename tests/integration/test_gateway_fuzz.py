"""A fuzz tier over the gateway's routes: Hypothesis sends each route's JSON body, valid or
nearly (fields dropped, wrong types, extreme numbers, blank, huge and unicode strings, extra
fields, bodies that are not objects or not JSON), with httpx to a real gateway in front of the
real workers. Each answer is a 200 in the route's documented shape, or an error in the
route's own error shape carrying rankstream's `code` (never a 500 or an uncoded answer); no
request goes unanswered; the gateway and the workers keep serving; and nothing reaches the
workers' dead letters that admission with the settings alone (`Planner`, no table, no model)
would have refused: the edge refuses that itself.

The stack is `test_properties.Pipeline` (workers on a background loop, with its dead-letter
collector) with the gateway on the same loop; each test is sync code around a nested
`@given`, one HTTP request per example.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from rankstream.config import Settings
from rankstream.errors import ErrorCode, InvalidRequestError
from rankstream.planning.admission import Planner
from rankstream.wire.contract import QueryRequest, RerankRequest, now_ms
from rankstream.workers.delivery import DeadLetter
from rankstream.workers.gateway.app import running_gateway
from rankstream.workers.gateway.search import SearchResponse
from tests.fuzzing import mostly, mutated
from tests.integration.test_gateway import (
    CohereError,
    CohereResponse,
    JinaResponse,
    OpenAiError,
    ScoreResponse,
    Strict,
    TeiError,
    TeiRank,
)
from tests.integration.test_properties import (
    PROPERTY_SETTINGS,
    Pipeline,
    examples_of,
    tricky_text,
    wire_tricky_text,
)

pytestmark = pytest.mark.integration

EXAMPLES = 50  # per route; a valid example costs a model call (~5 pairs/s on 2 cores)
FUZZ = hypothesis_settings(PROPERTY_SETTINGS, max_examples=EXAMPLES)
MAX_TEXTS = 6
MAX_DEPTH = 8
MAX_QUERY_CHARS = 300
MAX_BODY_BYTES = 4096
ANSWER_WAIT_S = 120.0
QUERIES = ["How does a heat pump heat a house?", "vaccines", "energy"]
TEXTS = ["A heat pump moves heat indoors.", "Bake bread at 220 C.", "Vaccines train immunity."]


class RankstreamError(Strict):
    class Body(Strict):
        code: str
        message: str

    error: Body


# --- the stack: workers and gateway on one background loop ---------------------------------


class GatewayPipeline(Pipeline):
    """test_properties' Pipeline (workers, dead-letter collector) with the gateway in front."""

    port = 0

    def __enter__(self) -> GatewayPipeline:
        super().__enter__()
        self._gateway = contextlib.AsyncExitStack()
        try:
            self.port = self.run(self._gateway.enter_async_context(running_gateway(self.settings)))
        except BaseException:
            super().__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self._gateway.aclose(), timeout=60)
        finally:
            super().__exit__(*exc_info)

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter stored since the last call (the gateway has answered, so any
        letter its request caused was stored before that answer)."""
        give_up_at = time.monotonic() + 10
        while not self.run(self._letters_caught_up()) and time.monotonic() < give_up_at:
            time.sleep(0.02)
        letters = list(self.letters)
        self.letters.clear()
        self.replies.clear()
        return letters


@pytest.fixture(scope="module")
def stack(
    nats_url: str, sample_db: str, model_cache_dir: Path, depth_policy_file: Path
) -> Iterator[GatewayPipeline]:
    settings = Settings(
        nats_url=nats_url,
        subject_prefix=f"gf{uuid.uuid4().hex[:10]}",
        lancedb_uri=sample_db,
        model_cache_dir=model_cache_dir,
        metrics_port=0,
        cache_ttl_s=0,
        max_batch_wait_ms=20,
        max_depth=MAX_DEPTH,
        max_auto_depth=MAX_DEPTH,
        # Depth `auto` is resolved by a fitted policy (none ships); the edge bounds it
        # without one, so the workers need one or they dead-letter it.
        auto_depth_policy=depth_policy_file,
        max_query_chars=MAX_QUERY_CHARS,
        max_request_pairs=24,
        default_depth=3,
        default_top_k=3,
        default_timeout_ms=90_000,
        retry_backoff_s=[0.05, 0.1],
        max_deliver=3,
        shutdown_grace_s=2.0,
        gateway_host="127.0.0.1",
        gateway_port=0,
        gateway_max_texts=MAX_TEXTS,
        gateway_max_body_bytes=MAX_BODY_BYTES,
    )
    with GatewayPipeline(settings) as running:
        yield running


# --- bodies --------------------------------------------------------------------------------

WILD: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 7, 9, 2**31, 2**63, 10**30, -(10**30), 1e308, -0.0, 0.5]),
    st.sampled_from([float("nan"), float("inf")]),
    st.sampled_from(["", " ", "\u3000", "x" * 5000, "\ud800", "😀" * 10, "null", "0", "auto"]),
    tricky_text,
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
QUERY = mostly(st.sampled_from(QUERIES), wire_tricky_text | tricky_text)
TEXT = mostly(st.sampled_from(TEXTS), wire_tricky_text | tricky_text)
DOCUMENTS = st.lists(TEXT, min_size=1, max_size=MAX_TEXTS + 1)
# Not an object, not JSON, nested past json.loads' recursion limit.
RAW = st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b"[" * 1500 + b"]" * 1500])


def body(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[bytes]:
    """A valid body with up to two fields dropped or replaced by wild values (or an unknown
    field added), as JSON bytes; now and then not an object at all."""
    valid = st.fixed_dictionaries(required, optional=optional)
    bodies = mutated(valid, [*required, *optional], WILD).map(lambda v: json.dumps(v).encode())
    return mostly(bodies, RAW | WILD.map(lambda v: json.dumps(v).encode()))


TOP_N = st.integers(1, MAX_TEXTS + 2)
COHERE = body(
    {"query": QUERY, "documents": DOCUMENTS},
    {
        "model": st.just("rerank-v3.5"),
        "top_n": TOP_N,
        "max_tokens_per_doc": st.sampled_from([8, 16, 512, 10**9]),
        "priority": st.sampled_from([0, 500, 999]),
    },
)
JINA = body(
    {
        "query": QUERY,
        "documents": st.lists(
            TEXT | st.builds(lambda t: {"text": t}, TEXT), min_size=1, max_size=MAX_TEXTS + 1
        ),
    },
    {"model": st.just("jina-reranker"), "top_n": TOP_N, "return_documents": st.booleans()},
)
TEI = body(
    {"query": QUERY, "texts": DOCUMENTS},
    {
        "raw_scores": st.booleans(),
        "return_text": st.booleans(),
        "truncate": st.booleans(),
        "truncation_direction": st.sampled_from(["Right", "left"]),
    },
)
SCORE = body(
    {"text_1": QUERY | st.lists(QUERY, min_size=1, max_size=3), "text_2": DOCUMENTS},
    {"model": st.just("bge-reranker")},
)
PIPELINES = ["dense", "bm25+ce@3", "hybrid+ce@5>ce@2", "dense+ce@auto", "dense+ce@4/maxp16"]
PIPELINES += ["dense+ce@9", "dense+ce@3>ce@4", "bm25+ce-int8@2/doc8"]
# Bodies admission refuses with the settings alone (no table needed), once let through by the
# edge and dead-lettered by the retrieval worker: checked one by one by
# test_search_refuses_at_the_edge_what_admission_would.
EDGE_REFUSALS = {
    "an unknown scorer": {"query": QUERIES[0], "pipeline": "hybrid+nope@2"},
    "an unconfigured scorer": {"query": QUERIES[0], "pipeline": "dense+student@2"},
    "a cascade over max_request_pairs": {
        "query": QUERIES[0],
        "pipeline": "hybrid+ce@4/maxp8>ce@3/maxp8",  # 4*4 + 3*4 = 28 pairs > 24
    },
}
SEARCH = body(
    {"query": QUERY},
    {
        "top_k": st.integers(1, MAX_DEPTH + 1),
        "depth": st.sampled_from([0, 2, "auto", MAX_DEPTH + 1]),
        "retrieval": st.sampled_from(["dense", "bm25", "hybrid"]),
        "pipeline": st.sampled_from(PIPELINES),
        "table": st.sampled_from(["no_such_table", "docs"]),
        "filter": st.sampled_from(["topic = 'energy'", "year >= 2020 AND NOT x IS NULL", "a = ;"]),
        "priority": st.sampled_from([0, 999]),
        "return_documents": st.booleans(),
        "cache": st.booleans(),
    },
)


# --- what an answer may be -----------------------------------------------------------------


def _ranked_in_order(scores: list[float], indices: list[int], sent: Any, key: str) -> None:
    documents = sent[key]
    asked = sent.get("top_n")
    assert scores == sorted(scores, reverse=True), "best first"
    assert len(set(indices)) == len(indices)
    assert all(0 <= i < len(documents) for i in indices)
    assert len(indices) == min(asked or len(documents), len(documents))


def check_cohere(sent: Any, answer: Any) -> None:
    response = CohereResponse.model_validate(answer)
    scores = [r.relevance_score for r in response.results]
    assert all(0 <= s <= 1 for s in scores)
    _ranked_in_order(scores, [r.index for r in response.results], sent, "documents")


def check_jina(sent: Any, answer: Any) -> None:
    response = JinaResponse.model_validate(answer)
    scores = [r.relevance_score for r in response.results]
    assert all(0 <= s <= 1 for s in scores)
    _ranked_in_order(scores, [r.index for r in response.results], sent, "documents")


def check_tei(sent: Any, answer: Any) -> None:
    ranks = TypeAdapter(list[TeiRank]).validate_python(answer)
    _ranked_in_order(
        [r.score for r in ranks], [r.index for r in ranks], {**sent, "top_n": None}, "texts"
    )


def check_score(sent: Any, answer: Any) -> None:
    response = ScoreResponse.model_validate(answer)
    queries, documents = sent["text_1"], sent["text_2"]
    pairs = len(documents) if isinstance(queries, str) or len(queries) == 1 else len(queries)
    assert [d.index for d in response.data] == list(range(pairs)), "request order"
    assert all(0 <= d.score <= 1 for d in response.data)


def check_search(sent: Any, answer: Any) -> None:
    response = SearchResponse.model_validate(answer)
    assert len(response.results) <= (sent.get("top_k") or MAX_DEPTH)


@dataclass(frozen=True)
class Route:
    path: str
    bodies: st.SearchStrategy[bytes]
    check_answer: Callable[[Any, Any], None]
    error_shape: type[BaseModel]
    examples: tuple[dict[str, Any], ...] = ()


ROUTES = [
    Route(
        "/v2/rerank",
        COHERE,
        check_cohere,
        CohereError,
        (
            {"query": "\ud800", "documents": TEXTS},
            {"query": QUERIES[0], "documents": TEXTS, "max_tokens_per_doc": 10**9, "top_n": 9},
        ),
    ),
    Route("/v1/rerank", JINA, check_jina, OpenAiError),
    Route("/rerank", TEI, check_tei, TeiError),
    Route(
        "/score",
        SCORE,
        check_score,
        OpenAiError,
        ({"text_1": QUERIES, "text_2": TEXTS}, {"text_1": QUERIES[:2], "text_2": TEXTS}),
    ),
    Route(
        "/v1/search",
        SEARCH,
        check_search,
        RankstreamError,
        (
            {"query": QUERIES[0], "pipeline": "dense+ce@auto>ce@8"},
            {"query": "\udfff", "filter": "topic = '\ud800'"},
        ),
    ),
]


def error_code(route: Route, answer: Any) -> str:
    shape = route.error_shape.model_validate(answer)
    code = shape.error.code if isinstance(shape, OpenAiError | RankstreamError) else shape.code  # type: ignore[attr-defined]
    return str(code)


def refusable_at_the_edge(settings: Settings, letter: DeadLetter) -> str | None:
    """Why admission with the settings alone (no table, no model) refuses the request a dead
    letter holds, or None when only a worker could tell."""
    planner = Planner.from_settings(settings)
    payload = base64.b64decode(letter.payload_base64)
    try:
        try:
            planner.plan_rerank(RerankRequest.model_validate_json(payload), received_at_ms=now_ms())
        except ValidationError:
            planner.plan_query(
                QueryRequest.model_validate_json(payload),
                received_at_ms=now_ms(), embedder_model="edge", table_version=None,
            )  # fmt: skip
    except (InvalidRequestError, ValidationError) as error:
        return str(error)
    return None


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0

    @property
    def cases(self) -> int:
        return sum(self.statuses.values())


def answer_is_coded(
    stack: GatewayPipeline, http: httpx.Client, route: Route, content: bytes, tally: Tally
) -> None:
    """Send one body; check its answer's shape and the dead letters it caused."""
    response = http.post(route.path, content=content, headers={"content-type": "application/json"})
    tally.statuses[response.status_code] += 1
    assert response.headers.get("content-type") == "application/json", response.text
    answer = response.json()
    if response.status_code == 200:
        route.check_answer(json.loads(content), answer)
    else:
        code = error_code(route, answer)
        tally.codes[code] += 1
        assert code in {c.value for c in ErrorCode}
        assert response.status_code < 500 or code in {"unavailable", "expired"}, (
            f"{response.status_code} {answer}"
        )
    letters = stack.dead_letters()
    tally.dead_letters += len(letters)
    for letter in letters:
        why = refusable_at_the_edge(stack.settings, letter)
        assert why is None, f"dead-lettered ({letter.reason}), the edge could refuse: {why}"


def client_of(stack: GatewayPipeline) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{stack.port}", timeout=ANSWER_WAIT_S)


@pytest.mark.parametrize("route", ROUTES, ids=[r.path for r in ROUTES])
def test_every_body_gets_a_coded_answer_and_nothing_refusable_is_dead_lettered(
    stack: GatewayPipeline, route: Route
) -> None:
    tally = Tally()
    with client_of(stack) as http:

        @FUZZ
        @examples_of("content", [json.dumps(e).encode() for e in route.examples])
        @given(content=route.bodies)
        def answered(content: bytes) -> None:
            note(f"body: {content[:300]!r}")
            answer_is_coded(stack, http, route, content, tally)

        try:
            answered()
        finally:
            print(f"\n{route.path}: {tally.cases} cases, statuses {dict(tally.statuses)}, "
                  f"codes {dict(tally.codes)}, dead letters {tally.dead_letters}")  # fmt: skip
        assert http.get("/health").status_code == 200, "the gateway keeps serving"
        served = http.post("/rerank", json={"query": QUERIES[0], "texts": TEXTS})
        assert served.status_code == 200, served.text


@pytest.mark.parametrize("body", EDGE_REFUSALS.values(), ids=list(EDGE_REFUSALS))
def test_search_refuses_at_the_edge_what_admission_would(
    stack: GatewayPipeline, body: dict[str, Any]
) -> None:
    with client_of(stack) as http:
        answer_is_coded(stack, http, ROUTES[-1], json.dumps(body).encode(), Tally())
