"""Message sizes: the gateway's body limit, the workers' max_message_bytes and the NATS
server's max_payload nest one inside the next, and a message that cannot fit is refused as
invalid at once (never retried until its deadline); against real nats-servers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import nats
import pytest

from rankstream.client import RankstreamClient
from rankstream.config import NATS_MAX_PAYLOAD_BYTES, Settings
from rankstream.errors import ErrorCode, QueryFailedError, RequestTooLargeError
from rankstream.wire.contract import RerankDocument
from rankstream.workers.app import WorkerKind, running_workers
from rankstream.workers.gateway.app import running_gateway
from rankstream.workers.local import EmbeddedNatsServer

pytestmark = pytest.mark.integration

SMALL_PAYLOAD = 16 * 1024


@pytest.fixture(scope="module")
def small_server() -> Iterator[EmbeddedNatsServer]:
    """A server that carries 16 KiB messages (nats-server's own default is 1 MiB)."""
    with EmbeddedNatsServer(max_payload=SMALL_PAYLOAD) as server:
        yield server


def on_small_server(settings: Settings, server: EmbeddedNatsServer) -> Settings:
    return settings.model_copy(
        update={"nats_url": server.url, "subject_prefix": f"s{uuid.uuid4().hex[:10]}"}
    )


async def test_the_default_limits_nest_inside_the_embedded_servers_max_payload(
    nats_url: str,
) -> None:
    connection = await nats.connect(nats_url)
    max_payload = connection.max_payload
    await connection.close()
    defaults = Settings()
    assert max_payload == NATS_MAX_PAYLOAD_BYTES
    assert defaults.gateway_max_body_bytes < defaults.max_message_bytes <= max_payload


def test_a_gateway_body_limit_over_the_message_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="RANKSTREAM_GATEWAY_MAX_BODY_BYTES"):
        Settings(max_message_bytes=1 << 20, gateway_max_body_bytes=2 << 20)


async def test_the_client_refuses_a_request_over_the_servers_max_payload_before_publishing(
    settings: Settings, small_server: EmbeddedNatsServer
) -> None:
    settings = on_small_server(settings, small_server)
    documents = [RerankDocument(text="y" * 1000) for _ in range(20)]
    async with RankstreamClient(settings) as client:
        started = time.monotonic()
        with pytest.raises(RequestTooLargeError, match="max_payload of 16384 bytes") as refused:
            await client.rerank("q", documents, timeout_s=10)
    assert time.monotonic() - started < 1, "refused at once, not retried until the deadline"
    assert refused.value.code == ErrorCode.INVALID_REQUEST
    assert "fewer or shorter documents" in str(refused.value)


async def test_the_gateway_answers_a_body_the_server_cannot_carry_with_413_in_its_shape(
    settings: Settings, small_server: EmbeddedNatsServer
) -> None:
    settings = on_small_server(settings, small_server).model_copy(
        update={"gateway_host": "127.0.0.1", "gateway_port": 0, "gateway_max_texts": 32}
    )
    body = {"query": "q", "documents": ["y" * 1000] * 20}  # 20 kB: under the body limit
    async with (
        running_gateway(settings) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http,
    ):
        started = time.monotonic()
        response = await http.post("/v2/rerank", json=body)
    assert time.monotonic() - started < 5
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "invalid_request"
    assert "max_payload" in response.json()["message"]


async def test_an_answer_over_the_servers_max_payload_is_an_invalid_request_not_retried(
    settings: Settings, small_server: EmbeddedNatsServer
) -> None:
    """300 one-word documents fit in a request; their ranked answer (scores, ranks, stage
    for each) does not: the rerank worker's publish fails the same way on every delivery,
    so it answers invalid_request at once."""
    settings = on_small_server(settings, small_server)
    documents = [f"document {i}" for i in range(300)]
    async with (
        running_workers(settings, [WorkerKind.RERANK]),
        RankstreamClient(settings) as client,
    ):
        request = client.rerank_request("which document?", documents, timeout_s=60)
        assert len(request.model_dump_json()) < SMALL_PAYLOAD
        started = time.monotonic()
        with pytest.raises(QueryFailedError) as failure:
            await client.rerank("which document?", documents, timeout_s=60)
    assert failure.value.code == ErrorCode.INVALID_REQUEST
    assert "max_payload" in str(failure.value)
    assert time.monotonic() - started < 20, "permanent: not redelivered with backoff"
