"""The Grafana dashboard against a real Prometheus scraping a real, loaded pipeline.

Every panel query of infra/grafana/rankstream-dashboard.json must be valid PromQL and must
return data once the workers and the HTTP gateway have served some traffic (including a
request that arrived after its deadline, and a gateway request refused with 422), so a
renamed metric or a typo in a query fails here, not on a wall display. Prometheus scrapes
the workers (job `rankstream`) and the gateway's own /metrics (job `rankstream-gateway`), as
infra/prometheus/ does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import nats
import pytest
from prometheus_client import start_http_server
from prometheus_client.metrics import MetricWrapperBase

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.metrics import Metrics
from rankstream.retrieval.corpus import sample_queries
from rankstream.wire.connection import connect_kwargs
from rankstream.wire.contract import REPLY_ADAPTER, StageTimings, now_ms
from rankstream.wire.handoff import Candidate, CandidateSet
from rankstream.wire.subjects import Subjects
from rankstream.workers.app import running_workers
from rankstream.workers.gateway.app import running_gateway
from rankstream.workers.gateway.metrics import GatewayMetrics
from rankstream.workers.local import free_port
from tests.plans import plan_for

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).parents[2] / "infra" / "grafana" / "rankstream-dashboard.json"
JOB = "rankstream"
GATEWAY_JOB = "rankstream-gateway"
# What Grafana would put in for its variables (the All value of $job is its allValue).
VARIABLES = {
    "__rate_interval": "1m", "__interval": "15s", "__range": "5m", "job": ".+",
    "gateway_job": ".+",
}  # fmt: skip
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")

DEPTH = 10
CONCURRENT = 16  # 160 pairs a wave: under a minute even at 3 pairs/s (a slow CI machine)
WAVES = 2
QUERY_TIMEOUT_S = 240
STARTUP_TIMEOUT_S = 60
SCRAPES_AFTER_LOAD = 3
DATA_TIMEOUT_S = 60
HTTP_TIMEOUT_S = 10


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str  # Grafana variables substituted

    def __str__(self) -> str:
        return f"{self.panel!r} {self.ref_id}: {self.expr}"


@dataclass(frozen=True)
class Prometheus:
    url: str
    metrics_port: int  # the workers' /metrics it scrapes on 127.0.0.1 (job JOB)
    gateway_port: int  # the gateway's /metrics it scrapes on 127.0.0.1 (job GATEWAY_JOB)


def load_dashboard() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD.read_text()))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def substitute(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown Grafana variable ${name} in {text}"
        return VARIABLES[name]

    return VARIABLE.sub(value, text)


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], substitute(target["expr"]))
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_importable_grafana_json_covering_every_rankstream_metric() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"

    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]

    expressions = " ".join(query.expr for query in panel_queries(dashboard))
    declared = {
        family.name
        for metrics in (Metrics(), GatewayMetrics())
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
    }
    assert declared, "no metrics found in Metrics"
    unused = sorted(name for name in declared if name not in expressions)
    assert not unused, f"metrics no panel shows: {unused}"
    assert "faststream_" in expressions
    assert "rankstream_gateway_requests" in declared  # (a counter family drops _total)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A real Prometheus on loopback scraping the workers' and the gateway's /metrics every
    second."""
    binary = shutil.which("prometheus")
    if binary is None:
        reason = "the `prometheus` binary is not on PATH (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run this test")
        pytest.skip(reason)
    metrics_port, gateway_port, web_port = free_port(), free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
        f"  - job_name: {GATEWAY_JOB}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{gateway_port}']\n"
    )
    url = f"http://127.0.0.1:{web_port}"
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        give_up = time.monotonic() + STARTUP_TIMEOUT_S
        while not _is_ready(url):
            if process.poll() is not None or time.monotonic() > give_up:
                raise AssertionError(f"Prometheus did not get ready:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield Prometheus(url, metrics_port, gateway_port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=HTTP_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except OSError:  # connection refused, or 503 while it starts
        return False


def _api(url: str, path: str, params: list[tuple[str, str]]) -> Any:
    """GET a Prometheus HTTP API path; its `data`, or AssertionError with the server's error."""
    address = f"{url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(address, timeout=HTTP_TIMEOUT_S) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:  # 400 bad_data: the expression does not parse
        raise AssertionError(f"{path} {params}: HTTP {error.code}: {error.read()!r}") from error
    assert body["status"] == "success", body
    return body["data"]


def _instant(url: str, expr: str) -> list[dict[str, Any]]:
    data = _api(url, "/api/v1/query", [("query", expr)])
    assert data["resultType"] == "vector", data
    return cast(list[dict[str, Any]], data["result"])


def _wait_for_scrapes_after(url: str, moment_s: float) -> None:
    """Until Prometheus has scraped the workers and the gateway SCRAPES_AFTER_LOAD times after
    `moment_s`."""
    give_up = time.monotonic() + DATA_TIMEOUT_S
    for job in (JOB, GATEWAY_JOB):
        while True:
            last = _instant(url, f'timestamp(up{{job="{job}"}} == 1)')
            if last and float(last[0]["value"][1]) >= moment_s + SCRAPES_AFTER_LOAD:
                break
            assert time.monotonic() < give_up, f"no successful scrape of {job} after load: {last}"
            time.sleep(0.5)


def _empty_queries(url: str, queries: list[PanelQuery]) -> list[PanelQuery]:
    """Queries still without a result after DATA_TIMEOUT_S (series can lag a scrape or two)."""
    pending = list(queries)
    give_up = time.monotonic() + DATA_TIMEOUT_S
    while pending and time.monotonic() < give_up:
        pending = [query for query in pending if not _instant(url, query.expr)]
        if pending:
            time.sleep(1.0)
    return pending


async def _put_load(client: RankstreamClient) -> None:
    texts = [q.text for q in sample_queries()]
    for wave in range(WAVES):
        results = await asyncio.gather(
            *(
                client.query(texts[(wave + i) % len(texts)], depth=DEPTH, timeout_s=QUERY_TIMEOUT_S)
                for i in range(CONCURRENT)
            )
        )
        assert len(results) == CONCURRENT
        await asyncio.sleep(2.0)  # a couple of scrapes between the waves


async def _call_gateway(port: int) -> None:
    """Rerank requests through the gateway (Jina's and Cohere's routes), one it refuses (422:
    an empty document), and a health check: requests by route and status, their latency and
    documents per request all have samples."""
    documents = [q.text for q in sample_queries()][:DEPTH]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        for _ in range(WAVES):
            jina = {"query": "How do vaccines work?", "documents": documents, "top_n": 3}
            cohere = {**jina, "model": "rerank-v3.5"}
            answers = await asyncio.gather(
                http.post("/v1/rerank", json=jina), http.post("/v2/rerank", json=cohere)
            )
            assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
            refused = await http.post("/v1/rerank", json={"query": "q", "documents": [""]})
            assert refused.status_code == 422, refused.text
            assert (await http.get("/health")).status_code == 200
            await asyncio.sleep(2.0)  # a couple of scrapes between the waves


async def _send_past_deadline(client: RankstreamClient, settings: Settings) -> None:
    """Two requests whose deadline passed an hour ago: one through retrieval, one handed to
    the rerank worker directly (as if it had waited in the candidates stream). Each gets an
    answer: an `expired` error or a `degraded` result, whichever the worker gives."""
    text = sample_queries()[0].text
    fresh = client.request(text, depth=DEPTH, timeout_s=QUERY_TIMEOUT_S)
    stale = fresh.model_copy(update={"created_at_ms": fresh.created_at_ms - 3_600_000})
    reply = await client.send(stale)
    assert reply.request_id == stale.request_id

    subjects = Subjects.from_settings(settings)
    connection = await nats.connect(**connect_kwargs(settings))
    try:
        reply_to = subjects.results_for(f"dashboard-test.{uuid.uuid4().hex}")
        subscription = await connection.subscribe(reply_to)
        request = stale.model_copy(update={"request_id": uuid.uuid4().hex, "reply_to": reply_to})
        candidate_set = CandidateSet(
            plan=plan_for(settings, request),
            candidates=[
                Candidate(
                    doc_id=f"doc-{rank}",
                    text=f"passage number {rank} about vaccines",
                    retrieval_score=1.0 / rank,
                    retrieval_rank=rank,
                )
                for rank in range(1, DEPTH + 1)
            ],
            timings_ms=StageTimings(queue_wait=now_ms() - request.created_at_ms),
            embedder_model="test",
        )
        await connection.jetstream().publish(
            subjects.candidates,
            candidate_set.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"{request.request_id}:candidates"},
        )
        message = await subscription.next_msg(timeout=QUERY_TIMEOUT_S)
        assert REPLY_ADAPTER.validate_json(message.data).request_id == request.request_id
    finally:
        await connection.drain()


async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    settings: Settings, prometheus: Prometheus
) -> None:
    dashboard = load_dashboard()
    queries = panel_queries(dashboard)
    assert queries

    settings = settings.model_copy(
        update={"cache_ttl_s": 600.0, "gateway_port": prometheus.gateway_port}
    )  # the cache's panels need data; Prometheus scrapes the gateway on its port
    metrics = Metrics()
    server, thread = start_http_server(
        prometheus.metrics_port, addr="127.0.0.1", registry=metrics.registry
    )
    try:
        async with (
            running_workers(settings, metrics=metrics),
            RankstreamClient(settings) as client,
            running_gateway(settings, client=client, metrics=GatewayMetrics()) as port,
        ):
            await asyncio.gather(_put_load(client), _call_gateway(port))
            await _send_past_deadline(client, settings)
            await asyncio.to_thread(_wait_for_scrapes_after, prometheus.url, time.time())
            empty = await asyncio.to_thread(_empty_queries, prometheus.url, queries)
            job_values = await asyncio.to_thread(_variable_values, prometheus.url, dashboard)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    assert not empty, "panel queries without data:\n" + "\n".join(map(str, empty))
    assert JOB in job_values["job"], job_values
    assert GATEWAY_JOB in job_values["gateway_job"], job_values


def _variable_values(url: str, dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """What each `label_values(metric, label)` query variable would offer."""
    values = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES.match(text.strip())
        assert match, f"variable {variable['name']}: unsupported query {text!r}"
        metric, label = match.groups()
        data = _api(url, f"/api/v1/label/{label}/values", [("match[]", metric)])
        values[variable["name"]] = cast(list[str], data)
    return values
