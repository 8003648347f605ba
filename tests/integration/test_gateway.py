"""The HTTP gateway with the clients people already use, unchanged: the official `cohere`
SDK, LangChain's CohereRerank in a ContextualCompressionRetriever, TEI- and Jina/vLLM-shaped
requests through httpx; against a real uvicorn, real NATS, the real workers and models.

One stack for the module (the int8 cross-encoder scores ~5 pairs/s on a 2-core box, so the
documents are few and short). Sync SDKs run in a thread: the gateway serves on this loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import cohere
import httpx
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_cohere import CohereRerank
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangchainDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, ConfigDict, SecretStr

from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.models.registry import load_embedder
from rankstream.retrieval.corpus import read_documents
from rankstream.retrieval.store import DocumentStore
from rankstream.workers.app import running_workers
from rankstream.workers.gateway.app import running_gateway

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


@dataclass(frozen=True)
class Stack:
    url: str
    metrics: Metrics
    settings: Settings


@pytest.fixture(scope="module")
async def stack(
    nats_url: str, sample_db: str, model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = Settings(
        nats_url=nats_url,
        subject_prefix=f"g{uuid.uuid4().hex[:10]}",
        lancedb_uri=sample_db,
        model_cache_dir=model_cache_dir,
        metrics_port=0,
        cache_ttl_s=0,
        max_batch_wait_ms=50,
        max_batch_tokens=16384,
        gateway_host="127.0.0.1",
        gateway_port=0,
        gateway_tokens=[SecretStr(TOKEN)],
        gateway_max_texts=MAX_TEXTS,
        gateway_max_body_bytes=4096,
    )
    corpus = tmp_path_factory.mktemp("meta") / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(row) for row in META_ROWS))
    embedder = load_embedder(settings)
    meta = settings.model_copy(update={"table": META_TABLE})
    DocumentStore.from_settings(meta).index(read_documents(corpus), embedder)
    metrics = Metrics()
    async with (
        running_workers(settings, metrics=metrics, embedder=embedder),
        running_gateway(settings) as port,
    ):
        yield Stack(f"http://127.0.0.1:{port}", metrics, settings)


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
        docs = await anonymous.get("/docs")
        spec = await anonymous.get("/openapi.json")
    assert missing.status_code == wrong.status_code == 401
    assert CohereError.model_validate(missing.json()).code == "unauthorized"
    assert TeiError.model_validate(wrong.json()).code == "unauthorized"
    assert health.status_code == 200
    assert docs.status_code == 200
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/v1/search"} <= set(spec.json()["paths"])

    with pytest.raises(cohere.errors.UnauthorizedError):
        await asyncio.to_thread(
            cohere.ClientV2(api_key="wrong", base_url=stack.url).rerank,
            model="m", query=QUERY, documents=DOCS,
        )  # fmt: skip
    sdk = cohere.ClientV2(api_key=TOKEN, base_url=stack.url)
    with pytest.raises(cohere.errors.UnprocessableEntityError) as invalid:
        await asyncio.to_thread(sdk.rerank, model="m", query=QUERY, documents=[])
    assert invalid.value.body["code"] == "invalid_request"

    async with httpx.AsyncClient(base_url=stack.url, headers=auth(), timeout=60) as http:
        too_many = await http.post(
            "/rerank", json={"query": QUERY, "texts": ["x"] * (MAX_TEXTS + 1)}
        )
        too_many_jina = await http.post(
            "/v1/rerank", json={"query": QUERY, "documents": ["x"] * (MAX_TEXTS + 1)}
        )
        too_large = await http.post("/v1/rerank", json={"query": QUERY, "documents": ["y" * 5000]})
        bad_tei = await http.post("/rerank", json={"query": QUERY})
        bad_jina = await http.post("/v1/rerank", json={"query": QUERY, "documents": [], "top_n": 0})
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
