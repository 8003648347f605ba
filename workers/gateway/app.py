"""The gateway's ASGI app (FastAPI) and its server (uvicorn), in front of a RankstreamClient.

    app = create_app(settings, client)      # a connected RankstreamClient
    async with running_gateway(settings) as port: ...   # connect, serve, stop

Every rerank route publishes a RerankRequest and awaits the answer, so HTTP requests in flight
together share the rerank workers' model batches like any other requests. Bearer tokens
(`gateway_tokens`) guard every route but the probes (`/livez`, `/readyz`, `/health`),
`/metrics` and the docs; bodies over `gateway_max_body_bytes` get 413. Each request is logged
in one line (logger `rankstream.gateway.access`: method, path, status, milliseconds) unless
`gateway_access_log` is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import (
    ErrorCode,
    InvalidRequestError,
    RankstreamError,
    RequestTooLargeError,
    UnauthorizedError,
)
from rankstream.models.registry import load_reranker_tokenizer
from rankstream.planning.profile import served_profile
from rankstream.workers.gateway.cohere import build_cohere_router
from rankstream.workers.gateway.errors import (
    Api,
    Problem,
    api_for_scope,
    error_response,
    problem_for,
)
from rankstream.workers.gateway.jina import build_jina_router
from rankstream.workers.gateway.metrics import GatewayMetrics
from rankstream.workers.gateway.openapi import (
    OPEN_PATHS,
    OPEN_PREFIXES,
    OPENAPI_URL,
    install_docs,
    install_openapi,
)
from rankstream.workers.gateway.readiness import LivenessBody, ReadinessBody, ReadinessProbe
from rankstream.workers.gateway.search import build_search_router
from rankstream.workers.gateway.service import GatewayService
from rankstream.workers.gateway.tei import build_tei_router
from rankstream.workers.gateway.validation import validation_message
from rankstream.workers.gateway.vllm import build_vllm_router

log = logging.getLogger(__name__)
access_log = logging.getLogger("rankstream.gateway.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES = frozenset(
    {
        "/v2/rerank", "/v1/rerank", "/rerank", "/info", "/score", "/v1/score", "/v1/search",
        "/health", "/livez", "/readyz", "/metrics",
    }
)  # fmt: skip
DESCRIPTION = """Rerank APIs your clients already speak, in front of rankstream's micro-batched
cross-encoder over NATS. Scores: `/v2/rerank` (Cohere), `/v1/rerank` (Jina, vLLM, Cohere v1)
and `/score` (vLLM) return sigmoid(logit) in [0, 1]; `/rerank` (TEI) sigmoid unless
`raw_scores`; `/v1/search` raw logits. Up to 1,000 documents a request by default
(RANKSTREAM_GATEWAY_MAX_TEXTS, RANKSTREAM_MAX_DEPTH, RANKSTREAM_MAX_REQUEST_PAIRS); no
documents, no results. Auth: `Authorization: Bearer <token>` when RANKSTREAM_GATEWAY_TOKENS is
set. Errors carry rankstream's code (`invalid_request` 422/413, `unauthorized` 401,
`overloaded` 429 with Retry-After, `unavailable` 503, `expired` 504, `model_error`,
`store_error`, `internal` 500) in each API's own error shape. Probes: `/livez` (the process
serves), `/readyz` and `/health` (NATS connected, streams there, workers consuming them)."""


def create_app(
    settings: Settings, client: RankstreamClient, metrics: GatewayMetrics | None = None
) -> FastAPI:
    """The gateway app.

    Args:
        settings: tokens, body and text limits, request defaults.
        client: a connected RankstreamClient (the caller connects and closes it).
        metrics: where the gateway counts its requests (default: a new registry).
    """
    metrics = metrics or GatewayMetrics()
    service = GatewayService(settings, client, load_reranker_tokenizer(settings), metrics)
    readiness = ReadinessProbe(settings, client)
    app = FastAPI(
        title="rankstream gateway",
        version="1",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_URL,
    )
    routers = (
        build_cohere_router, build_jina_router, build_tei_router, build_vllm_router,
        build_search_router,
    )  # fmt: skip
    for router in routers:
        app.include_router(router(service))

    def api_of(request: Request) -> Api:
        chosen = getattr(request.state, "api", None)
        return chosen if isinstance(chosen, Api) else api_for_scope(request.scope)

    @app.exception_handler(RankstreamError)
    @app.exception_handler(TimeoutError)
    async def _problem(request: Request, error: Exception) -> JSONResponse:
        return error_response(api_of(request), problem_for(error))

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def _invalid(request: Request, error: Exception) -> JSONResponse:
        details = (
            error.errors() if isinstance(error, RequestValidationError | ValidationError) else []
        )
        body = error.body if isinstance(error, RequestValidationError) else None
        message = validation_message(details, request.headers.get("content-type"), body)
        return error_response(api_of(request), problem_for(InvalidRequestError(message)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        """A bug: 500 `internal` in the API's shape (the server logs the traceback)."""
        return error_response(api_of(request), problem_for(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: Exception) -> JSONResponse:
        return error_response(api_of(request), _http_problem(error))

    probe_responses: dict[int | str, dict[str, Any]] = {
        503: {"model": ReadinessBody, "description": "Not ready: the reason says what is missing."}
    }

    async def ready() -> JSONResponse:
        result = await readiness.check()
        return JSONResponse(
            result.body().model_dump(),
            status_code=200 if result.ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=ReadinessBody,
        responses=probe_responses,
        summary="Readiness: 200 when NATS, the streams and the workers are there, else 503",
        description="200 only when connected to NATS, the work-queue streams exist and a "
        "worker of each kind (RANKSTREAM_GATEWAY_READY_WORKERS) consumes them; 503 with the "
        "reason otherwise. Checked at most once per RANKSTREAM_GATEWAY_READY_CACHE_S.",
    )
    async def readyz() -> JSONResponse:
        return await ready()

    @app.get(
        "/health",
        tags=["operations"],
        response_model=ReadinessBody,
        responses=probe_responses,
        summary="Readiness, as `/readyz` (what load balancers probe)",
        description="The same answer as `/readyz`: a load balancer that probes `/health` "
        "stops sending requests no worker would answer. Liveness is `/livez`.",
    )
    async def health() -> JSONResponse:
        return await ready()

    @app.get(
        "/livez",
        tags=["operations"],
        response_model=LivenessBody,
        summary="Liveness: 200 while the process serves HTTP",
        description="Says nothing of NATS or the workers (that is `/readyz`): restart the "
        "gateway only when this fails.",
    )
    async def livez() -> LivenessBody:
        return LivenessBody(status="ok")

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics of the gateway",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    install_docs(app)
    install_openapi(app, settings)

    # Outermost first: metrics and the access log see every answer, auth runs before the
    # body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.gateway_max_body_bytes)
    app.add_middleware(BearerAuth, tokens=[t.get_secret_value() for t in settings.gateway_tokens])
    app.add_middleware(Measured, metrics=metrics, access_log=settings.gateway_access_log)
    return app


def _http_problem(error: Exception) -> Problem:
    """FastAPI's own refusals (no such route, wrong method, a body it could not parse) as
    problems. A 400 is a body json.loads gave up on without a JSONDecodeError: nested too
    deeply (RecursionError)."""
    status = error.status_code if isinstance(error, StarletteHTTPException) else 500
    if status == 400:
        return problem_for(InvalidRequestError(
            "the body could not be parsed as JSON (nested too deeply?): "
            "send a flat JSON object as the API documents"
        ))  # fmt: skip
    detail = error.detail if isinstance(error, StarletteHTTPException) else "internal error"
    return Problem(status, ErrorCode.INVALID_REQUEST.value, str(detail))


class BodyLimit:
    """413 for a body over `max_bytes`: by its Content-Length, or counted as it streams.

    The body is read here, before the app: an error raised from inside the app's own reading
    would reach FastAPI's body parsing, which answers any error there with a bare 400.
    """

    def __init__(self, app: Asgi, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body = await self._read(receive)
        if body is None:
            await self._refuse(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # after the body: a disconnect, as the server reports it
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes `max_bytes` (or the client left)."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = bytes(message.get("body", b""))
            seen += len(chunk)
            if seen > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = problem_for(RequestTooLargeError(
            f"request body over {self.max_bytes} bytes (RANKSTREAM_GATEWAY_MAX_BODY_BYTES)"
        ))  # fmt: skip
        await error_response(api_for_scope(scope), problem)(scope, receive, send)


class BearerAuth:
    """401 unless `Authorization: Bearer <one of tokens>`; no tokens: everyone is let in."""

    def __init__(self, app: Asgi, tokens: list[str]) -> None:
        self.app, self.tokens = app, [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        is_open = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if scope["type"] != "http" or not self.tokens or is_open:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # Compared with every token, each in constant time: no timing tells which was close.
        matches = [hmac.compare_digest(token.strip(), known) for known in self.tokens]
        if scheme.lower() == b"bearer" and any(matches):
            await self.app(scope, receive, send)
            return
        problem = problem_for(
            UnauthorizedError("a valid `Authorization: Bearer <token>` is required")
        )
        await error_response(api_for_scope(scope), problem)(scope, receive, send)


class Measured:
    """Counts every answer by route and status, times it, and logs it in one line
    (`access_log`): `POST /v2/rerank 200 12.3 ms`."""

    def __init__(self, app: Asgi, metrics: GatewayMetrics, access_log: bool = True) -> None:
        self.app, self.metrics, self.log = app, metrics, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500
        started = time.perf_counter()

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.seconds.labels(route=route).observe(seconds)
            if self.log:
                access_log.info(
                    "%s %s %d %.1f ms", scope.get("method", "-"), scope["path"], status,
                    seconds * 1000,
                )  # fmt: skip


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process that runs it decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def running_gateway(
    settings: Settings,
    client: RankstreamClient | None = None,
    metrics: GatewayMetrics | None = None,
) -> AsyncIterator[int]:
    """Serve the gateway on `gateway_host:gateway_port` (0: a free port) until the block
    ends; yields the port it listens on.

    Args:
        client: a connected client to publish through; default: one connected here (its
            client id `<nats_user>.<random>`, see RankstreamClient).
        metrics: the gateway's metrics (default: a new registry).

    Raises:
        RankstreamError: NATS is not reachable (from the client's connect).
        OSError: the port is taken.
    """
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(RankstreamClient(settings))
        app = create_app(settings, client, metrics)
        config = uvicorn.Config(
            app, host=settings.gateway_host, port=settings.gateway_port,
            log_config=None, access_log=False, lifespan="off",
        )  # fmt: skip
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
                raise OSError(f"the gateway could not listen on port {settings.gateway_port}")
            await asyncio.sleep(0.02)
        port = int(server.servers[0].sockets[0].getsockname()[1])
        log.info("gateway on http://%s:%d (docs at /docs)", settings.gateway_host, port)
        try:
            yield port
        finally:
            server.should_exit = True
            await task


async def serve_gateway(settings: Settings) -> None:
    """`rankstream gateway`: serve until SIGINT/SIGTERM, against `settings.nats_url`. Its
    edge checks follow the workers' profile (`settings.profile`): a bad one stops it here."""
    served_profile(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_gateway(settings):
        await stop.wait()
