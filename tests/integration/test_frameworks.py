"""Each framework's own reranker, unchanged, pointed at the gateway with only its documented
base-URL option (and its API key), reranks 100 retrieved passages: LangChain, LlamaIndex,
Haystack, the `rerankers` library, the Cohere SDK and the OpenAI SDK; and every snippet of the
README's "Drop-in for your framework" runs as printed.

One real stack for the module (real nats-server, the workers with the packaged models, the
gateway through `running_gateway`) with the default settings: only a token (to exercise each
client's key option) and no result cache (every client sends the same question: each must reach
the model) are set. Sync clients run in a thread: the gateway serves on this loop. The
latency of each call is printed as a table at the end of the module. Haystack's components run
alone, as their docs show: its telemetry reports only `Pipeline.run`, so nothing leaves the
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import cohere
import httpx2
import openai
import pytest
from haystack import Document as HaystackDocument
from haystack.utils import Secret
from haystack_integrations.components.rankers.cohere import CohereRanker
from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_cohere import CohereRerank as LangchainCohereRerank
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangchainDocument
from langchain_core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank as LlamaCohereRerank
from llama_index.postprocessor.jinaai_rerank import JinaRerank
from llama_index.postprocessor.tei_rerank import TextEmbeddingInference
from pydantic import SecretStr
from rerankers import Reranker
from tei_client import HttpClient as TeiHttpClient

from rankstream.retrieval.corpus import read_documents, sample_corpus_path, sample_queries
from tests.integration.gateway_stack import Stack, serving, stack_settings

pytestmark = pytest.mark.integration

T = TypeVar("T")

TOKEN = "t" + uuid.uuid4().hex
COUNT = 100
TOP_N = 10
README = Path(__file__).resolve().parents[2] / "README.md"


def retrieved_passages() -> tuple[str, list[str], int]:
    """The sample collection's heat-pump question and 100 passages a retriever could return
    for it: one answer (the relevant passage, somewhere in the middle), the heat-pump news
    that only mentions the words, the corpus's other documents, and single sentences of those
    to make up the hundred. Returns (query, passages, index of the answer)."""
    query = next(q for q in sample_queries() if q.relevant[0].startswith("heatpump"))
    answer, *other_answers = query.relevant
    documents = [d for d in read_documents(sample_corpus_path()) if d.doc_id not in other_answers]
    relevant = next(d.text for d in documents if d.doc_id == answer)
    others = [d.text for d in documents if d.doc_id != answer]
    sentences = [
        s
        for d in documents
        if not d.doc_id.startswith("heatpump")
        for s in re.split(r"(?<=[.!?])\s+", d.text)
        if len(s.split()) >= 8
    ]
    passages = others + sentences[: COUNT - 1 - len(others)]
    random.Random(23).shuffle(passages)
    at = COUNT // 2 + 7
    passages.insert(at, relevant)
    assert len(passages) == len(set(passages)) == COUNT
    return query.text, passages, at


QUERY, PASSAGES, RELEVANT = retrieved_passages()


@dataclass(frozen=True)
class Call:
    """One client's call, for the table printed at the end of the module."""

    client: str
    package: str
    route: str
    documents: int
    seconds: float


CALLS: list[Call] = []


@pytest.fixture(scope="module", autouse=True)
def client_table(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not CALLS or reporter is None or capture is None:
        return
    lines = [f"{'client':<48} {'package':<46} {'route':<10} docs  latency"]
    lines += [
        f"{c.client:<48} {c.package:<46} {c.route:<10} {c.documents:>4}  {c.seconds * 1000:5.0f} ms"
        for c in CALLS
    ]
    with capture.global_and_fixture_disabled():  # as capsys.disabled(): shown without -s
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture(scope="module")
async def stack(nats_url: str, sample_db: str, model_cache_dir: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(
        nats_url, sample_db, model_cache_dir, gateway_tokens=[SecretStr(TOKEN)], cache_ttl_s=0
    )
    async with serving(settings) as running:
        yield running


async def timed(client: str, package: str, route: str, call: Callable[[], T]) -> T:
    """`call()` in a thread, timed and recorded for the table."""
    started = time.perf_counter()
    result = await asyncio.to_thread(call)
    seconds = time.perf_counter() - started
    CALLS.append(Call(client, f"{package} {version(package)}", route, COUNT, seconds))
    return result


def check_ranking(ranked: list[tuple[str, float]], expected: int = TOP_N) -> None:
    """The answer first, best first, as many as asked for."""
    texts = [text for text, _ in ranked]
    scores = [score for _, score in ranked]
    assert texts[0] == PASSAGES[RELEVANT], f"ranked first: {texts[0]!r}"
    assert scores == sorted(scores, reverse=True), "not best first"
    assert len(ranked) == expected
    assert len(set(texts)) == len(texts)


# --- Cohere's API (POST /v2/rerank) ---


async def test_the_cohere_sdk(stack: Stack) -> None:
    co = cohere.ClientV2(api_key=TOKEN, base_url=stack.url)
    response = await timed(
        "cohere ClientV2.rerank",
        "cohere",
        "/v2/rerank",
        lambda: co.rerank(model="rerank-v3.5", query=QUERY, documents=PASSAGES, top_n=TOP_N),
    )
    check_ranking([(PASSAGES[r.index], r.relevance_score) for r in response.results])


async def test_langchain_cohere_rerank_in_a_compression_retriever(stack: Stack) -> None:
    class Retrieved(BaseRetriever):
        def _get_relevant_documents(
            self, query: str, *, run_manager: CallbackManagerForRetrieverRun
        ) -> list[LangchainDocument]:
            return [LangchainDocument(page_content=text) for text in PASSAGES]

    reranker = LangchainCohereRerank(
        model="rerank-v3.5", cohere_api_key=SecretStr(TOKEN), base_url=stack.url, top_n=TOP_N
    )
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=Retrieved())
    documents = await timed(
        "LangChain CohereRerank", "langchain-cohere", "/v2/rerank", lambda: retriever.invoke(QUERY)
    )
    check_ranking([(d.page_content, d.metadata["relevance_score"]) for d in documents])


def llama_nodes() -> list[NodeWithScore]:
    """The passages as a LlamaIndex retriever returns them (with made-up retrieval scores)."""
    return [
        NodeWithScore(node=TextNode(text=text), score=1 - i / COUNT)
        for i, text in enumerate(PASSAGES)
    ]


def llama_ranking(nodes: list[NodeWithScore]) -> list[tuple[str, float]]:
    return [(n.node.get_content(), float(n.score or 0.0)) for n in nodes]


async def test_llamaindex_cohere_rerank(stack: Stack) -> None:
    reranker = LlamaCohereRerank(
        model="rerank-v3.5", top_n=TOP_N, api_key=TOKEN, base_url=stack.url
    )
    nodes = await timed(
        "LlamaIndex CohereRerank",
        "llama-index-postprocessor-cohere-rerank",
        "/v2/rerank",
        lambda: reranker.postprocess_nodes(llama_nodes(), query_str=QUERY),
    )
    check_ranking(llama_ranking(nodes))


async def test_haystack_cohere_ranker(stack: Stack) -> None:
    ranker = CohereRanker(
        model="rerank-v3.5", top_k=TOP_N, api_key=Secret.from_token(TOKEN), api_base_url=stack.url
    )
    documents = [HaystackDocument(content=text) for text in PASSAGES]
    result = await timed(
        "Haystack CohereRanker",
        "cohere-haystack",
        "/v2/rerank",
        lambda: ranker.run(query=QUERY, documents=documents),
    )
    check_ranking([(d.content or "", d.score or 0.0) for d in result["documents"]])


# --- text-embeddings-inference's API (POST /rerank) ---


async def test_llamaindex_text_embeddings_inference_rerank(stack: Stack) -> None:
    reranker = TextEmbeddingInference(top_n=TOP_N, base_url=stack.url, auth_token=f"Bearer {TOKEN}")
    nodes = await timed(
        "LlamaIndex TextEmbeddingInference",
        "llama-index-postprocessor-tei-rerank",
        "/rerank",
        lambda: reranker.postprocess_nodes(llama_nodes(), query_str=QUERY),
    )
    check_ranking(llama_ranking(nodes))


async def test_haystack_hugging_face_tei_ranker(stack: Stack) -> None:
    ranker = HuggingFaceTEIRanker(url=stack.url, top_k=TOP_N, token=Secret.from_token(TOKEN))
    documents = [HaystackDocument(content=text) for text in PASSAGES]
    result = await timed(
        "Haystack HuggingFaceTEIRanker",
        "huggingface-api-haystack",
        "/rerank",
        lambda: ranker.run(query=QUERY, documents=documents),
    )
    check_ranking([(d.content or "", d.score or 0.0) for d in result["documents"]])


async def test_tei_client(stack: Stack) -> None:
    client = TeiHttpClient(stack.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    result = await timed(
        "tei-client HttpClient.rerank",
        "tei-client",
        "/rerank",
        lambda: client.rerank(QUERY, PASSAGES),
    )
    check_ranking([(PASSAGES[r.index], r.score) for r in result.ranks], expected=COUNT)


# --- the `rerankers` library's API ranker, one provider per API shape (its `url` option) ---


@pytest.mark.parametrize(
    ("provider", "route"),
    [("cohere", "/v2/rerank"), ("jina", "/v1/rerank"), ("text-embeddings-inference", "/rerank")],
)
async def test_rerankers_api_ranker(stack: Stack, provider: str, route: str) -> None:
    ranker = Reranker(provider, api_key=TOKEN, url=f"{stack.url}{route}", verbose=0)
    results = await timed(
        f"rerankers Reranker({provider!r})",
        "rerankers",
        route,
        lambda: ranker.rank(query=QUERY, docs=PASSAGES),
    )
    check_ranking([(r.document.text, r.score) for r in results], expected=COUNT)
    assert [r.document.text for r in results.top_k(1)] == [PASSAGES[RELEVANT]]


# --- Jina's and vLLM's API (POST /v1/rerank) ---


async def test_llamaindex_jina_rerank(stack: Stack) -> None:
    reranker = JinaRerank(top_n=TOP_N, api_key=TOKEN, base_url=f"{stack.url}/v1")
    nodes = await timed(
        "LlamaIndex JinaRerank",
        "llama-index-postprocessor-jinaai-rerank",
        "/v1/rerank",
        lambda: reranker.postprocess_nodes(llama_nodes(), query_str=QUERY),
    )
    check_ranking(llama_ranking(nodes))


async def test_the_openai_sdk_posts_the_vllm_shape(stack: Stack) -> None:
    """The OpenAI SDK has no rerank call: its documented way to reach another route of an
    OpenAI-style server (vLLM's `/v1/rerank`) is `client.post`."""
    client = openai.OpenAI(api_key=TOKEN, base_url=f"{stack.url}/v1")
    body = {"model": "m", "query": QUERY, "documents": PASSAGES, "top_n": TOP_N}
    response = await timed(
        "openai OpenAI.post('/rerank')",
        "openai",
        "/v1/rerank",
        lambda: client.post("/rerank", cast_to=httpx2.Response, body=body),
    )
    check_ranking(
        [(r["document"]["text"], r["relevance_score"]) for r in response.json()["results"]]
    )


# --- the README's snippets, as printed ---

SNIPPETS = ("langchain", "llamaindex", "haystack", "cohere", "openai", "curl")
SNIPPET_ANSWER = "A heat pump moves heat from the cold outside air into the house"


def readme_snippet(name: str) -> tuple[str, str]:
    """The fenced block after `<!-- snippet: name -->` in README.md: (language, code)."""
    found = re.search(
        rf"<!-- snippet: {re.escape(name)} -->\s*```(\w+)\n(.*?)\n```",
        README.read_text(encoding="utf-8"),
        re.DOTALL,
    )
    assert found, f"README.md has no `<!-- snippet: {name} -->` before a fenced block"
    return found[1], found[2]


def gateway_env(stack: Stack) -> dict[str, str]:
    return {"RANKSTREAM_GATEWAY_URL": stack.url, "RANKSTREAM_GATEWAY_TOKEN": TOKEN}


@pytest.mark.parametrize("name", [n for n in SNIPPETS if n != "curl"])
async def test_the_readme_snippet_runs(
    stack: Stack, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    language, code = readme_snippet(name)
    assert language == "python"
    for key, value in gateway_env(stack).items():
        monkeypatch.setenv(key, value)
    printed = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"README.md:{name}", "exec"), {"__name__": "__main__"})

    await asyncio.to_thread(run)
    assert SNIPPET_ANSWER in printed.getvalue(), printed.getvalue()


async def test_the_readme_curl_snippet_runs(stack: Stack) -> None:
    language, code = readme_snippet("curl")
    assert language in {"sh", "bash", "shell"}
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is not installed (CI must run every README snippet)")
        pytest.skip("curl is not installed")
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", code],
        env={**os.environ, **gateway_env(stack)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert SNIPPET_ANSWER in done.stdout, done.stdout


def test_every_snippet_reads_the_gateway_url_from_the_environment() -> None:
    for name in SNIPPETS:
        _, code = readme_snippet(name)
        assert "RANKSTREAM_GATEWAY_URL" in code, name
        assert "http://localhost:8080" in code, f"{name}: the default URL"
