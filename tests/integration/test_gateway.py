"""The HTTP gateway with the clients people already use, unchanged: the official `cohere`
SDK, LangChain's CohereRerank in a ContextualCompressionRetriever, TEI- and Jina/vLLM-shaped
requests through httpx; against a real uvicorn, real NATS, the real workers and models.

One stack for the module (the int8 cross-encoder is slow on a 2-core box, so the documents
are few and short, but for one test of 1,000 short ones: the depth each API promises). Sync
SDKs run in a thread: the gateway serves on this loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import cohere
import httpx
import nats
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_cohere import CohereRerank
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangchainDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, ConfigDict, SecretStr

from rankstream.client import RankstreamClient
from rankstream.metrics import Metrics
from rankstream.models.registry import load_embedder
from rankstream.retrieval.corpus import read_documents
from rankstream.retrieval.store import DocumentStore
from rankstream.wire.contract import REPLY_ADAPTER, RankedResult
from rankstream.workers.app import running_workers
from rankstream.workers.gateway.app import running_gateway
from tests.integration.gateway_stack import Stack, serving, stack_settings

pytestmark = pytest.mark.integration

TOKEN = "t" + uuid.uuid4().hex
MAX_TEXTS = 8
QUERY = "How does a heat pump heat a house?"
DOCS = [
    "Recipe: bake the bread at 220 C for thirty minutes.",
    "A heat pump moves heat from outside air into the house.",
    "Heat pumps are electric.",
]
META_TABLE = f"gw_meta_{uuid.uuid4().hex[:8]}"
META_ROWS = [
    {
        "id": "m1",
        "text": "A heat pump moves heat indoors in winter.",
        "topic": "energy",
        "year": 2021,
    },
    {"id": "m2", "text": "Heat pumps cut heating bills.", "topic": "energy", "year": 2015},
    {"id": "m3", "text": "Vaccines train the immune system.", "topic": "health", "year": 2022},
]


# --- the documented response shapes (extra="forbid": nothing undocumented sneaks in) ---
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CohereResult(Strict):
    index: int
    relevance_score: float


class CohereApiVersion(Strict):
    version: str


class CohereBilledUnits(Strict):
    search_units: float


class CohereMeta(Strict):
    api_version: CohereApiVersion
    billed_units: CohereBilledUnits


class CohereResponse(Strict):
    id: str
    results: list[CohereResult]
    meta: CohereMeta


class TextDoc(Strict):
    text: str


class JinaResult(Strict):
    index: int
    document: TextDoc | None = None
    relevance_score: float


class JinaUsage(Strict):
    total_tokens: int
    prompt_tokens: int | None = None


class JinaResponse(Strict):
    id: str  # vLLM's
    model: str
    usage: JinaUsage
    results: list[JinaResult]


class TeiRank(Strict):
    index: int
    score: float
    text: str | None = None


class TeiError(Strict):
    error: str
    error_type: str
    code: str


class OpenAiErrorBody(Strict):
    message: str
    type: str
    param: str | None
    code: str


class OpenAiError(Strict):
    error: OpenAiErrorBody


class CohereError(Strict):
    id: str
    message: str
    code: str


@pytest.fixture(scope="module")
async def stack(
    nats_url: str, sample_db: str, model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = stack_settings(
        nats_url, sample_db, model_cache_dir,
        cache_ttl_s=0,
        max_batch_wait_ms=50,
        max_batch_tokens=16384,
        gateway_tokens=[SecretStr(TOKEN)],
        gateway_max_texts=MAX_TEXTS,
        gateway_max_body_bytes=4096,
    )  # fmt: skip
    corpus = tmp_path_factory.mktemp("meta") / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(row) for row in META_ROWS))
    embedder = load_embedder(settings)
    meta = settings.model_copy(update={"table": META_TABLE})
    DocumentStore.from_settings(meta).index(read_documents(corpus), embedder)
    async with serving(settings, embedder=embedder) as stack:
        yield stack


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


async def test_the_cohere_sdk_reranks_through_the_gateway(stack: Stack) -> None:
    client = cohere.ClientV2(api_key=TOKEN, base_url=stack.url)
    response = await asyncio.to_thread(
        client.rerank, model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=2
    )
    assert [r.index for r in response.results] == [1, 2]
    assert all(0 <= r.relevance_score <= 1 for r in response.results)
    assert response.results[0].relevance_score > response.results[1].relevance_score
    assert response.meta is not None
    assert response.meta.api_version is not None

    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        raw = await http.post("/v2/rerank", json={"model": "x", "query": QUERY, "documents": DOCS})
    assert raw.status_code == 200
    body = CohereResponse.model_validate(raw.json())
    assert sorted(r.index for r in body.results) == [0, 1, 2]


async def test_langchain_cohere_rerank_compresses_a_retrievers_documents(stack: Stack) -> None:
    class Fixed(BaseRetriever):
        def _get_relevant_documents(
            self, query: str, *, run_manager: CallbackManagerForRetrieverRun
        ) -> list[LangchainDocument]:
            return [
                LangchainDocument(page_content=text, metadata={"n": i})
                for i, text in enumerate(DOCS)
            ]

    reranker = CohereRerank(
        model="rerank-v3.5", cohere_api_key=SecretStr(TOKEN), base_url=stack.url, top_n=2
    )
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=Fixed())
    documents = await asyncio.to_thread(retriever.invoke, QUERY)
    assert [d.metadata["n"] for d in documents] == [1, 2]
    assert all(0 <= d.metadata["relevance_score"] <= 1 for d in documents)


async def test_tei_rerank_gives_sigmoid_scores_by_default_and_logits_when_asked(
    stack: Stack,
) -> None:
    request = {"query": QUERY, "texts": DOCS[:2], "return_text": True}
    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        plain, raw = await asyncio.gather(
            http.post("/rerank", json=request),
            http.post("/rerank", json={**request, "raw_scores": True, "return_text": False}),
        )
    assert plain.status_code == raw.status_code == 200
    sigmoid_ranks = [TeiRank.model_validate(r) for r in plain.json()]
    logit_ranks = [TeiRank.model_validate(r) for r in raw.json()]
    assert [r.index for r in sigmoid_ranks] == [1, 0]
    assert sigmoid_ranks[0].text == DOCS[1]
    assert logit_ranks[0].text is None
    assert logit_ranks[0].score > 1, "a relevant pair's logit, not a probability"
    for probability, logit in zip(sigmoid_ranks, logit_ranks, strict=True):
        # Batch-mates move the int8 model's scores a little (see README), so not exactly.
        assert probability.score == pytest.approx(sigmoid(logit.score), abs=0.05)


async def test_jina_and_vllm_rerank_shape(stack: Stack) -> None:
    documents = [DOCS[0], {"text": DOCS[1]}]
    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        with_docs = await http.post(
            "/v1/rerank", json={"model": "m", "query": QUERY, "documents": documents, "top_n": 1}
        )
        without = await http.post(
            "/v1/rerank",
            json={"query": QUERY, "documents": DOCS[:2], "return_documents": False},
        )
    body = JinaResponse.model_validate(with_docs.json())
    assert [r.index for r in body.results] == [1]
    assert body.results[0].document == TextDoc(text=DOCS[1])
    assert 0 <= body.results[0].relevance_score <= 1
    assert body.usage.total_tokens > 0
    assert all(r.document is None for r in JinaResponse.model_validate(without.json()).results)


async def test_search_returns_the_ranked_result_with_stage_timings(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        response = await http.post("/v1/search", json={"query": QUERY, "top_k": 2, "depth": 3})
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == 2
    assert body["reranked"] == 3
    assert body["timings_ms"]["inference"] > 0
    assert body["timings_ms"]["total"] > 0
    assert {"doc_id", "text", "score", "stage", "retrieval_rank"} <= set(body["results"][0])


async def test_search_takes_a_table_and_a_metadata_filter(stack: Stack) -> None:
    request = {"query": QUERY, "top_k": 3, "depth": 0, "table": META_TABLE}
    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        energy = await http.post("/v1/search", json={**request, "filter": "topic = 'energy'"})
        recent = await http.post(
            "/v1/search", json={**request, "filter": "topic IN ('energy') AND year >= 2020"}
        )
        unknown_column = await http.post("/v1/search", json={**request, "filter": "colour = 'x'"})
        not_sql = await http.post("/v1/search", json={**request, "filter": "1=1; DROP TABLE x"})
        no_table = await http.post("/v1/search", json={**request, "table": "no_such_table"})
    assert sorted(d["doc_id"] for d in energy.json()["results"]) == ["m1", "m2"]
    assert [d["doc_id"] for d in recent.json()["results"]] == ["m1"]
    for refused in (unknown_column, not_sql, no_table):
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "invalid_request"
    assert "colour" in unknown_column.json()["error"]["message"]


async def test_errors_come_in_each_apis_shape_with_rankstreams_code(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as anonymous:
        missing = await anonymous.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
        wrong = await anonymous.post(
            "/rerank", json={"query": QUERY, "texts": DOCS}, headers={"Authorization": "Bearer x"}
        )
        health = await anonymous.get("/health")
        live = await anonymous.get("/livez")
        docs = await anonymous.get("/docs")
        spec = await anonymous.get("/openapi.json")
    assert missing.status_code == wrong.status_code == 401
    assert CohereError.model_validate(missing.json()).code == "unauthorized"
    assert TeiError.model_validate(wrong.json()).code == "unauthorized"
    assert health.status_code == live.status_code == 200, health.text
    assert docs.status_code == 200
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/v1/search"} <= set(spec.json()["paths"])

    with pytest.raises(cohere.errors.UnauthorizedError):
        await asyncio.to_thread(
            cohere.ClientV2(api_key="wrong", base_url=stack.url).rerank,
            model="m", query=QUERY, documents=DOCS,
        )  # fmt: skip
    sdk = cohere.ClientV2(api_key=TOKEN, base_url=stack.url)
    with pytest.raises(cohere.errors.UnprocessableEntityError) as invalid:
        await asyncio.to_thread(sdk.rerank, model="m", query=QUERY, documents=[DOCS[0], ""])
    assert invalid.value.body["code"] == "invalid_request"
    assert invalid.value.body["message"].startswith("documents[1] is empty")
    # No documents: an empty result, as Cohere answers.
    empty = await asyncio.to_thread(sdk.rerank, model="m", query=QUERY, documents=[])
    assert empty.results == []

    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        too_many = await http.post(
            "/rerank", json={"query": QUERY, "texts": ["x"] * (MAX_TEXTS + 1)}
        )
        too_many_jina = await http.post(
            "/v1/rerank", json={"query": QUERY, "documents": ["x"] * (MAX_TEXTS + 1)}
        )
        too_large = await http.post("/v1/rerank", json={"query": QUERY, "documents": ["y" * 5000]})
        bad_tei = await http.post("/rerank", json={"query": QUERY})
        bad_jina = await http.post(
            "/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": -1}
        )
        metrics = await http.get("/metrics")
    assert too_many.status_code == 413
    assert TeiError.model_validate(too_many.json()).error_type == "validation"
    assert too_many_jina.status_code == too_large.status_code == 413
    assert OpenAiError.model_validate(too_large.json()).error.code == "invalid_request"
    assert bad_tei.status_code == bad_jina.status_code == 422
    assert TeiError.model_validate(bad_tei.json()).code == "invalid_request"
    assert OpenAiError.model_validate(bad_jina.json()).error.type == "invalid_request_error"
    assert 'rankstream_gateway_requests_total{route="/rerank",status="413"}' in metrics.text


def batch_requests_over_one(metrics: Metrics) -> float:
    """Model batches so far that mixed pairs of more than one request."""
    registry = metrics.registry
    total = registry.get_sample_value("rankstream_rerank_batch_requests_count") or 0.0
    alone = registry.get_sample_value("rankstream_rerank_batch_requests_bucket", {"le": "1.0"})
    return total - (alone or 0.0)


async def test_concurrent_http_requests_share_model_batches(stack: Stack) -> None:
    before = batch_requests_over_one(stack.metrics)
    client = cohere.AsyncClientV2(api_key=TOKEN, base_url=stack.url)
    responses = await asyncio.gather(
        *(client.rerank(model="m", query=f"{QUERY} ({i})", documents=DOCS[1:]) for i in range(4))
    )
    assert all(len(r.results) == 2 for r in responses)
    assert batch_requests_over_one(stack.metrics) > before, "no model call mixed two requests"


def samples(stack: Stack, name: str, labels: dict[str, str]) -> float:
    return stack.metrics.registry.get_sample_value(name, labels) or 0.0


def invalid_requests_seen_by_workers(stack: Stack) -> float:
    return sum(
        samples(stack, "rankstream_requests_total", {"worker": w, "outcome": "invalid_request"})
        for w in ("retrieval", "rerank")
    )


# One refused request per route and limit, and how each route's error body gives the code.
OVER_LONG_QUERY = "q" * 2049  # the default max_query_chars is 2048
REFUSED_AT_THE_EDGE = [
    ("/v2/rerank", {"query": "  \t ", "documents": DOCS}),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": MAX_TEXTS + 1}),
    ("/v2/rerank", {"query": OVER_LONG_QUERY, "documents": DOCS}),
    ("/v1/rerank", {"query": " ", "documents": DOCS}),
    ("/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": MAX_TEXTS + 1}),
    ("/v1/rerank", {"query": OVER_LONG_QUERY, "documents": DOCS}),
    ("/rerank", {"query": "\n", "texts": DOCS}),
    ("/rerank", {"query": OVER_LONG_QUERY, "texts": DOCS}),
    ("/v1/search", {"query": "   "}),
    ("/v1/search", {"query": QUERY, "top_k": 1001}),  # the default max_depth is 1000
    ("/v1/search", {"query": OVER_LONG_QUERY}),
]


def error_code(route: str, body: object) -> str:
    """rankstream's code from `route`'s own error shape (validated strictly)."""
    if route == "/v2/rerank":
        return CohereError.model_validate(body).code
    if route == "/v1/rerank":
        return OpenAiError.model_validate(body).error.code
    if route == "/rerank":
        return TeiError.model_validate(body).code
    assert isinstance(body, dict)
    return str(body["error"]["code"])


@pytest.mark.parametrize(("route", "request_body"), REFUSED_AT_THE_EDGE)
async def test_a_blank_or_over_long_query_or_too_large_a_top_n_is_refused_at_the_edge(
    stack: Stack, route: str, request_body: dict[str, object]
) -> None:
    """422 in the route's own shape, and no worker ever sees (or dead-letters) it."""
    before = invalid_requests_seen_by_workers(stack)
    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        response = await http.post(route, json=request_body)
    assert response.status_code == 422, response.text
    assert error_code(route, response.json()) == "invalid_request"
    assert invalid_requests_seen_by_workers(stack) == before


async def test_a_chunked_body_over_the_limit_gets_413_in_the_routes_shape(stack: Stack) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"query": "q", "documents": ["'
        for _ in range(5):
            yield b"y" * 1000
        yield b'"]}'

    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        response = await http.post(
            "/v1/rerank", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413, response.text
    assert OpenAiError.model_validate(response.json()).error.code == "invalid_request"
    assert "RANKSTREAM_GATEWAY_MAX_BODY_BYTES" in response.json()["error"]["message"]


async def test_a_deeply_nested_json_body_gets_422_in_the_routes_shape(stack: Stack) -> None:
    nested = '{"query": "q", "documents": ' + "[" * 1900 + "]" * 1900 + "}"
    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        response = await http.post(
            "/v2/rerank", content=nested, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422, response.text
    assert CohereError.model_validate(response.json()).code == "invalid_request"


async def test_the_documents_of_each_rerank_request_are_observed_by_route(stack: Stack) -> None:
    def documents_sum(metrics_text: str, route: str) -> float:
        line = f'rankstream_gateway_documents_sum{{route="{route}"}} '
        found = [
            float(row[len(line) :]) for row in metrics_text.splitlines() if row.startswith(line)
        ]
        return found[0] if found else 0.0

    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        before = (await http.get("/metrics")).text
        tei = await http.post("/rerank", json={"query": QUERY, "texts": DOCS[:2]})
        jina = await http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        after = (await http.get("/metrics")).text
    assert tei.status_code == jina.status_code == 200
    assert documents_sum(after, "/rerank") - documents_sum(before, "/rerank") == 2
    assert documents_sum(after, "/v1/rerank") - documents_sum(before, "/v1/rerank") == 3


async def test_search_forwards_return_documents_so_the_workers_send_no_texts(
    stack: Stack,
) -> None:
    """The answer on the wire (read beside the gateway's own client) carries no texts."""
    async with RankstreamClient(stack.settings) as client:
        watcher = await nats.connect(stack.settings.effective_nats_url)
        replies = await watcher.subscribe(client.reply_subject)
        async with (
            running_gateway(stack.settings, client=client) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth()) as http,
        ):
            response = await http.post(
                "/v1/search",
                json={"query": QUERY, "top_k": 2, "depth": 0, "return_documents": False},
                timeout=60,
            )
        wire = REPLY_ADAPTER.validate_json((await replies.next_msg(timeout=10)).data)
        await watcher.close()
    assert response.status_code == 200, response.text
    assert all("text" not in hit for hit in response.json()["results"])
    assert isinstance(wire, RankedResult)
    assert wire.results
    assert all(doc.text is None for doc in wire.results)


# ~480 tokens each: beside a long query, every pair fills the model's 512 tokens.
SLOW_DOCUMENT = "A heat pump moves heat from the outside air into the house in winter. " * 34
SLOW_QUERY = "how does a heat pump heat a house when it is cold outside " * 8


async def test_a_degraded_answer_is_a_504_expired_never_made_up_scores(
    stack: Stack, nats_url: str
) -> None:
    """Documents the caller brings have no retrieval order to fall back on: when the
    deadline passes before they are scored (48 full pairs take seconds of CPU; the gateway
    allows 1 s), each rerank route answers 504 `expired` in its own shape, saying what to
    change. Own workers that never shed load, so the deadline is what stops them."""
    settings = stack.settings.model_copy(
        update={
            "subject_prefix": f"d{uuid.uuid4().hex[:10]}",
            "shed_load": False,
            "max_batch_tokens": 2048,
            "default_timeout_ms": 1000,
            "gateway_max_texts": 16,
            "gateway_max_body_bytes": 1 << 20,
        }
    )
    texts = [f"{i}. {SLOW_DOCUMENT}" for i in range(16)]
    requests = {
        "/v2/rerank": {"query": SLOW_QUERY, "documents": texts},
        "/v1/rerank": {"query": SLOW_QUERY, "documents": texts},
        "/rerank": {"query": SLOW_QUERY, "texts": texts},
    }
    async with (
        running_workers(settings),
        running_gateway(settings) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth(), timeout=60) as http,
    ):
        responses = await asyncio.gather(
            *(http.post(route, json=body) for route, body in requests.items())
        )
    for route, response in zip(requests, responses, strict=True):
        assert response.status_code == 504, f"{route}: {response.text}"
        assert error_code(route, response.json()) == "expired"
        assert "fewer or shorter documents" in response.text, "what to change"


# --- what each API's own clients expect -------------------------------------------------------


class CohereV1Result(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, object] | None = None


class CohereV1Response(Strict):
    id: str
    results: list[CohereV1Result]
    meta: CohereMeta


class ScoreData(Strict):
    index: int
    object: str
    score: float


class ScoreUsage(Strict):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int


class ScoreResponse(Strict):
    id: str
    object: str
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


async def test_the_cohere_v1_sdk_gets_cohere_v1_semantics(stack: Stack) -> None:
    """`cohere.Client` (v1, what LlamaIndex's CohereRerank uses) posts to /v1/rerank:
    `return_documents` defaults to false there, `rank_fields` ranks objects on the fields
    named, and the answer is Cohere's v1 shape."""
    sdk = cohere.Client(api_key=TOKEN, base_url=stack.url)
    plain = await asyncio.to_thread(sdk.rerank, model="m", query=QUERY, documents=DOCS, top_n=2)
    assert [r.index for r in plain.results] == [1, 2]
    assert all(r.document is None for r in plain.results), "v1's default: no documents"
    assert plain.meta is not None
    assert plain.meta.api_version is not None
    assert plain.meta.api_version.version == "1"
    with_documents = await asyncio.to_thread(
        sdk.rerank, model="m", query=QUERY, documents=DOCS, top_n=1, return_documents=True
    )
    assert with_documents.results[0].document is not None
    assert with_documents.results[0].document.text == DOCS[1]

    objects = [
        {"title": "Bread recipes", "body": DOCS[1], "id": "a"},
        {"title": "How a heat pump heats a house", "body": DOCS[0], "id": "b"},
    ]
    by_title, by_body = await asyncio.gather(
        asyncio.to_thread(
            sdk.rerank, query=QUERY, documents=objects, rank_fields=["title"],
            return_documents=True,
        ),
        asyncio.to_thread(sdk.rerank, query=QUERY, documents=objects, rank_fields=["body"]),
    )  # fmt: skip
    assert [r.index for r in by_title.results] == [1, 0]
    assert [r.index for r in by_body.results] == [0, 1]
    returned = by_title.results[0].document
    assert returned is not None
    assert returned.model_extra == objects[1], "the object as sent, every field kept"

    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        raw = await http.post(
            "/v1/rerank",
            json={"query": QUERY, "documents": objects, "rank_fields": ["title"], "top_n": 1},
        )
        with_objects = await http.post(
            "/v1/rerank",
            json={"query": QUERY, "documents": objects, "rank_fields": ["title"],
                  "return_documents": True},
        )  # fmt: skip
        missing = await http.post(
            "/v1/rerank",
            json={"query": QUERY, "documents": objects, "rank_fields": ["author"]},
        )
    body = CohereV1Response.model_validate(raw.json())
    assert [r.index for r in body.results] == [1]
    assert body.results[0].document is None
    documents = CohereV1Response.model_validate(with_objects.json()).results
    assert [r.document for r in documents] == [objects[1], objects[0]]
    assert missing.status_code == 422
    assert CohereError.model_validate(missing.json()).message == (
        "documents[0] has none of the rank_fields ['author']: give it at least one of them"
    )


async def test_vllm_and_jina_clients_may_post_documents_to_rerank(stack: Stack) -> None:
    """vLLM serves its Jina-style rerank on /rerank too: a body with `documents` there is
    answered in that shape (top_n 0, vLLM's default, is every document)."""
    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        response = await http.post(
            "/rerank", json={"model": "m", "query": QUERY, "documents": DOCS, "top_n": 0}
        )
    assert response.status_code == 200, response.text
    body = JinaResponse.model_validate(response.json())
    assert [r.index for r in body.results][:2] == [1, 2]
    assert len(body.results) == 3
    assert body.results[0].document == TextDoc(text=DOCS[1])


async def test_vllm_score_scores_each_pair_in_request_order(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        one_to_many, pairwise, one, ranked, uneven = await asyncio.gather(
            http.post("/score", json={"model": "m", "text_1": QUERY, "text_2": DOCS}),
            http.post(
                "/v1/score",
                json={"queries": [QUERY, "bread baking temperature"], "documents": DOCS[1::-1]},
            ),
            http.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS[1]}),
            http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}),
            http.post("/score", json={"text_1": [QUERY, QUERY], "text_2": DOCS}),
        )
    scores = ScoreResponse.model_validate(one_to_many.json())
    assert [d.index for d in scores.data] == [0, 1, 2], "request order, not ranked"
    assert all(d.object == "score" and 0 <= d.score <= 1 for d in scores.data)
    assert scores.usage.total_tokens > 0
    by_index = {r["index"]: r["relevance_score"] for r in ranked.json()["results"]}
    for data in scores.data:
        assert data.score == pytest.approx(by_index[data.index], abs=0.05)
    both = ScoreResponse.model_validate(pairwise.json()).data
    assert both[0].score > 0.5, "(heat pump question, heat pump answer)"
    assert both[1].score > 0.5, "(bread question, bread recipe)"
    assert len(ScoreResponse.model_validate(one.json()).data) == 1
    assert uneven.status_code == 422
    assert "1:N" in OpenAiError.model_validate(uneven.json()).error.message


# ~600 tokens that do not answer the question, before (or after) the one sentence that does.
FILLER = "The bakery on the corner sells sourdough, rye and spelt loaves every morning. " * 40
ANSWER = "A heat pump heats a house by moving heat from the outside air indoors."


async def test_tei_truncation_direction_left_keeps_the_tail(stack: Stack) -> None:
    texts = [FILLER + ANSWER, ANSWER + " " + FILLER]
    request = {"query": QUERY, "texts": texts, "raw_scores": True}
    big = stack.settings.model_copy(update={"gateway_max_body_bytes": 1 << 20})
    async with (
        running_gateway(big) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth(), timeout=60) as http,
    ):
        right, left = await asyncio.gather(
            http.post("/rerank", json=request),
            http.post("/rerank", json={**request, "truncation_direction": "Left"}),
        )
    assert right.status_code == left.status_code == 200, left.text
    right_scores = {r["index"]: r["score"] for r in right.json()}
    left_scores = {r["index"]: r["score"] for r in left.json()}
    assert right_scores[1] > right_scores[0] + 3, "the head holds the answer of text 1 only"
    assert left_scores[0] > left_scores[1] + 3, "the tail holds the answer of text 0 only"


async def test_cohere_scores_a_long_document_by_its_best_chunk(stack: Stack) -> None:
    """Past the model's 512 tokens a document is chunked and scored by its best chunk, as
    Cohere does; `max_tokens_per_doc` up to 512 cuts it to its head instead."""
    # The answer, at length, after the ~600 tokens of filler: in the third window only.
    documents = [FILLER + (ANSWER + " ") * 20, DOCS[0]]
    big = stack.settings.model_copy(update={"gateway_max_body_bytes": 1 << 20})
    async with running_gateway(big) as port:
        sdk = cohere.AsyncClientV2(api_key=TOKEN, base_url=f"http://127.0.0.1:{port}")
        chunked, cut = await asyncio.gather(
            sdk.rerank(model="m", query=QUERY, documents=documents),
            sdk.rerank(model="m", query=QUERY, documents=documents, max_tokens_per_doc=256),
        )
    assert chunked.results[0].index == 0
    assert chunked.results[0].relevance_score > 0.9
    cut_score = {r.index: r.relevance_score for r in cut.results}[0]
    assert cut_score < 0.01, "its first 256 tokens are about bread"


async def test_a_thousand_documents_are_answered(stack: Stack) -> None:
    """Real retrieval depths: 1,000 documents (Cohere's documented limit, the default
    max_depth) on /v1/rerank and through the Cohere SDK on /v2/rerank, 40 on TEI's /rerank,
    with the default limits; each answered within its deadline on this machine, or refused
    with 429 and Retry-After, never a 413."""
    settings = stack.settings.model_copy(
        update={"gateway_max_texts": None, "gateway_max_body_bytes": 4 << 20}
    )
    documents = [
        f"{i}. " + (DOCS[1] if i % 100 == 7 else "Recipe: bake the bread at 220 C for an hour.")
        for i in range(1000)
    ]
    async with (
        running_gateway(settings) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth(), timeout=90) as http,
    ):
        started = time.perf_counter()
        jina = await http.post("/v1/rerank", json={"query": QUERY, "documents": documents})
        jina_s = time.perf_counter() - started
        sdk = cohere.AsyncClientV2(api_key=TOKEN, base_url=f"http://127.0.0.1:{port}")
        started = time.perf_counter()
        v2 = await sdk.rerank(model="m", query=QUERY, documents=documents, top_n=10)
        v2_s = time.perf_counter() - started
        tei = await http.post("/rerank", json={"query": QUERY, "texts": documents[:40]})
    print(f"\n1,000 documents: /v1/rerank {jina_s:.1f} s, /v2/rerank {v2_s:.1f} s")
    if jina.status_code == 429:
        assert int(jina.headers["retry-after"]) >= 1
    else:
        assert jina.status_code == 200, jina.text
        results = JinaResponse.model_validate(jina.json()).results
        assert len(results) == 1000
        assert {r.index for r in results[:10]} == {i for i in range(1000) if i % 100 == 7}
    assert {r.index for r in v2.results} == {i for i in range(1000) if i % 100 == 7}
    assert tei.status_code == 200, tei.text
    assert len(tei.json()) == 40
