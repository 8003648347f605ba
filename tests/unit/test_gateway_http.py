"""The gateway's HTTP contract that needs no workers: what a refused body is told (in each
API's own error shape), the OpenAPI document (valid OpenAPI 3.1, every status each route can
send, with the body it sends), the docs pages (no CDN), the probes without NATS, empty
requests, and the access log. The app runs in-process (Starlette's TestClient) over a client
that is not connected: nothing here reaches a worker."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.workers.gateway.app import create_app
from rankstream.workers.gateway.openapi import offline_assets
from rankstream.workers.gateway.service import GatewayService

TOKEN = "s3cret"
JSON = "application/json"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RERANK_ROUTES = ("/v2/rerank", "/v1/rerank", "/rerank", "/score", "/v1/score")
ERROR_SCHEMAS = {
    "/v2/rerank": "CohereErrorBody",
    "/v1/rerank": "OpenAiErrorBody",
    "/rerank": "TeiErrorBody",
    "/score": "OpenAiErrorBody",
    "/v1/score": "OpenAiErrorBody",
    "/v1/search": "RankstreamErrorBody",
}


def make_client(**settings: Any) -> TestClient:
    config = Settings(nats_url="nats://127.0.0.1:1", **settings)
    return TestClient(create_app(config, RankstreamClient(config)))


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with make_client(gateway_tokens=[SecretStr(TOKEN)], gateway_max_texts=3) as client:
        yield client


def message(route: str, body: dict[str, Any]) -> str:
    """The message from `route`'s own error shape."""
    if route == "/v2/rerank":
        assert set(body) == {"id", "message", "code"}
        return str(body["message"])
    if route in ("/v1/rerank", "/score", "/v1/score"):
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return str(body["error"]["message"])
    if route == "/rerank":
        assert set(body) == {"error", "error_type", "code"}
        return str(body["error"])
    return str(body["error"]["message"])


def documents_field(route: str) -> str:
    return {"/rerank": "texts", "/score": "text_2", "/v1/score": "text_2"}.get(route, "documents")


def body_with(route: str, texts: list[str], query: str = "heat pumps") -> dict[str, Any]:
    if route in ("/score", "/v1/score"):
        return {"text_1": query, "text_2": texts}
    return {"query": query, documents_field(route): texts}


@pytest.mark.parametrize("route", [*RERANK_ROUTES, "/v1/search"])
def test_a_body_that_is_not_json_is_told_so_and_where(http: TestClient, route: str) -> None:
    response = http.post(
        route,
        content=b'{"query": "q",\n "documents": [tea]}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    text = message(route, response.json())
    assert text.startswith("the body is not valid JSON: Expecting value at line 2 column 16")
    assert "JSON decode error" not in text


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("route", [*RERANK_ROUTES, "/v1/search"])
def test_a_body_without_the_json_content_type_is_told_which_to_send(
    http: TestClient, route: str, content_type: str | None
) -> None:
    headers = dict(AUTH) | ({"Content-Type": content_type} if content_type else {})
    response = http.post(route, content=b'{"query": "q", "documents": ["a"]}', headers=headers)
    assert response.status_code == 422
    text = message(route, response.json())
    assert "send `Content-Type: application/json` with a JSON object" in text
    assert (content_type or "no Content-Type") in text
    assert "valid dictionary" not in text


@pytest.mark.parametrize("route", RERANK_ROUTES)
def test_a_body_that_is_not_an_object_is_told_so(http: TestClient, route: str) -> None:
    response = http.post(route, json=["q", "a"], headers=AUTH)
    assert response.status_code == 422
    assert message(route, response.json()).startswith("the body is an array: send a JSON object")


@pytest.mark.parametrize("route", RERANK_ROUTES)
def test_an_empty_document_is_named_by_its_index(http: TestClient, route: str) -> None:
    response = http.post(route, json=body_with(route, ["one", "", "three"]), headers=AUTH)
    assert response.status_code == 422
    assert message(route, response.json()).startswith(f"{documents_field(route)}[1] is empty")


@pytest.mark.parametrize("route", RERANK_ROUTES)
def test_no_documents_get_an_empty_answer_and_the_query_is_still_checked(
    http: TestClient, route: str
) -> None:
    """Cohere answers an empty list of documents with an empty result; so does each route
    here (nothing is sent to a worker: this client is not even connected)."""
    response = http.post(route, json=body_with(route, []), headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body if route == "/rerank" else body["data" if "score" in route else "results"]
    assert results == []
    if route in ("/score", "/v1/score"):
        return
    blank = http.post(route, json=body_with(route, [], query="   "), headers=AUTH)
    assert blank.status_code == 422
    assert "query is blank" in message(route, blank.json())


@pytest.mark.parametrize("route", RERANK_ROUTES)
def test_more_documents_than_the_limit_get_413_naming_the_setting(
    http: TestClient, route: str
) -> None:
    response = http.post(route, json=body_with(route, ["a", "b", "c", "d"]), headers=AUTH)
    assert response.status_code == 413
    text = message(route, response.json())
    assert "4 " in text
    assert "at most 3" in text
    assert "RANKSTREAM_GATEWAY_MAX_TEXTS" in text


@pytest.mark.parametrize("route", RERANK_ROUTES)
def test_text_that_is_not_unicode_is_named(http: TestClient, route: str) -> None:
    """JSON can carry half a surrogate pair (`\\udfff`); no encoding can: refused, naming
    the document, never a 500."""
    sent = body_with(route, ["fine", "\udfff"]) | (
        {"truncation_direction": "Left"} if route == "/rerank" else {}
    )
    content = json.dumps(sent).encode()  # ASCII: `\\udfff` escaped, as a client may send it
    response = http.post(route, content=content, headers=AUTH | {"Content-Type": JSON})
    assert response.status_code == 422
    assert message(route, response.json()).startswith(
        f"{documents_field(route)}[1] is not valid text: it holds \\udfff"
    )


def test_a_bug_is_a_500_in_the_apis_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(GatewayService, "rerank", broken)
    config = Settings(nats_url="nats://127.0.0.1:1")
    app = create_app(config, RankstreamClient(config))
    with TestClient(app, raise_server_exceptions=False) as client:
        for route in RERANK_ROUTES:
            response = client.post(route, json=body_with(route, ["a"]))
            assert response.status_code == 500
            assert response.headers["content-type"] == "application/json"
            assert message(route, response.json()) == "internal error: RuntimeError"


def test_a_missing_field_and_a_wrong_type_say_where(http: TestClient) -> None:
    missing = http.post("/v2/rerank", json={"documents": ["a"]}, headers=AUTH)
    wrong = http.post("/v1/rerank", json={"query": "q", "documents": ["a", 5]}, headers=AUTH)
    both = http.post("/rerank", json={"query": "q"}, headers=AUTH)
    assert message("/v2/rerank", missing.json()) == "query is required"
    assert message("/v1/rerank", wrong.json()) == (
        "documents[1]: Input should be a valid string or a valid dictionary"
    )
    assert "`texts` (TEI) or `documents` (Jina, vLLM)" in message("/rerank", both.json())


def test_search_messages_say_the_problem_once(http: TestClient) -> None:
    """No `invalid_request:` before the message (the body has the code), no field named twice,
    no pydantic report pasted in."""
    bad_filter = http.post("/v1/search", json={"query": "q", "filter": "x = "}, headers=AUTH)
    widening = http.post(
        "/v1/search", json={"query": "q", "pipeline": "dense+ce@5>ce@10"}, headers=AUTH
    )
    assert bad_filter.json()["error"] == {
        "code": "invalid_request",
        "message": "filter: expected a value, found the end",
    }
    assert widening.json()["error"]["message"] == (
        "pipeline 'dense+ce@5>ce@10': each stage reranks at most as many candidates as the "
        "one before"
    )
    for response in (bad_filter, widening):
        assert "invalid_request:" not in response.text
        assert "Value error" not in response.text


def openapi_validator() -> Any:
    try:
        from openapi_spec_validator import validate
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("openapi-spec-validator is not installed")
    return validate


@pytest.mark.parametrize("tokens", [True, False])
def test_the_openapi_document_is_valid_and_lists_what_each_route_sends(tokens: bool) -> None:
    validate = openapi_validator()
    settings: dict[str, Any] = {"gateway_tokens": [SecretStr(TOKEN)]} if tokens else {}
    with make_client(**settings) as client:
        spec = client.get("/openapi.json").json()
    validate(spec)  # OpenAPI 3.1, offline
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert "HTTPValidationError" not in str(spec), "FastAPI's {detail: [...]} is never sent"
    for route, schema in ERROR_SCHEMAS.items():
        operation = spec["paths"][route]["post"]
        expected = {"200", "413", "422", "429", "500", "503", "504"}
        expected |= {"401"} if tokens else set()
        assert set(operation["responses"]) == expected, route
        for status in expected - {"200"}:
            content = operation["responses"][status]["content"]["application/json"]["schema"]
            assert content == {"$ref": f"#/components/schemas/{schema}"}, (route, status)
        assert "Retry-After" in operation["responses"]["429"]["headers"]
        assert operation.get("security") == ([{"bearerAuth": []}] if tokens else None)
    for probe in ("/readyz", "/health"):
        assert set(spec["paths"][probe]["get"]["responses"]) == {"200", "503"}
        assert "security" not in spec["paths"][probe]["get"]
    assert set(spec["paths"]["/livez"]["get"]["responses"]) == {"200"}
    info = spec["paths"]["/info"]["get"]
    assert set(info["responses"]) == ({"200", "401"} if tokens else {"200"})


def test_info_describes_a_reranker_as_tei_does() -> None:
    with make_client() as client:
        info = client.get("/info").json()
    assert set(info["model_type"]) == {"reranker"}
    assert info["max_client_batch_size"] == 1000  # the default document limit
    assert info["max_input_length"] == 512


def test_the_docs_load_nothing_from_another_host(http: TestClient) -> None:
    if offline_assets() is None and not os.environ.get("CI"):
        pytest.skip("fastapi-offline (Swagger UI's and ReDoc's files) is not installed")
    for page in ("/docs", "/redoc"):
        html = http.get(page)  # open: no token
        assert html.status_code == 200
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html.text), "a CDN"
        for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html.text):
            assert http.get(asset).status_code == 200, asset
    assert "swagger-ui-bundle.js" in http.get("/docs").text


def test_probes_without_nats_are_live_and_not_ready(http: TestClient) -> None:
    live, ready, health = http.get("/livez"), http.get("/readyz"), http.get("/health")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    for response in (ready, health):
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"] == {"nats_connected": False}
        assert body["reason"].startswith("not connected to NATS")


def test_every_request_is_one_access_log_line(
    http: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="rankstream.gateway.access"):
        http.get("/livez")
        http.post("/v2/rerank", json={"query": "q", "documents": []}, headers=AUTH)
        http.post("/v2/rerank", json={"query": "q", "documents": []})
    lines = [r.getMessage() for r in caplog.records if r.name == "rankstream.gateway.access"]
    assert len(lines) == 3
    assert re.fullmatch(r"GET /livez 200 [0-9.]+ ms", lines[0])
    assert re.fullmatch(r"POST /v2/rerank 200 [0-9.]+ ms", lines[1])
    assert re.fullmatch(r"POST /v2/rerank 401 [0-9.]+ ms", lines[2])
