"""The gateway's OpenAPI document and its docs pages, for client generators and people.

Every route lists each status it can send, with the body it sends: a route's results, or its
API's own error shape (errors.py), never FastAPI's `{detail: [...]}`; 429 with `Retry-After`,
401 (when tokens are configured) with `WWW-Authenticate`. The bearer scheme is declared, and
required of every route but the open ones when RANKSTREAM_GATEWAY_TOKENS is set.

`/docs` (Swagger UI) and `/redoc` load their scripts from the gateway itself, never from a
CDN: the assets ship in the `fastapi-offline` package. Without it, `/docs` says so and
points at `/openapi.json` (which any OpenAPI viewer reads).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from rankstream.config import Settings
from rankstream.workers.gateway.errors import ERROR_MODELS, Api

SECURITY_SCHEME = "bearerAuth"
OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
# Routes anyone may call, tokens or not.
OPEN_PATHS = frozenset(
    {"/health", "/livez", "/readyz", "/metrics", DOCS_URL, REDOC_URL, OPENAPI_URL}
)
OPEN_PREFIXES = (ASSETS_URL + "/",)

# What each error status means on a route that calls the workers.
STATUS_DESCRIPTIONS = {
    401: "`unauthorized`: a valid `Authorization: Bearer <token>` is required.",
    413: "`invalid_request`: more documents than the gateway takes (RANKSTREAM_GATEWAY_MAX_TEXTS, "
    "RANKSTREAM_MAX_DEPTH), more pairs than RANKSTREAM_MAX_REQUEST_PAIRS, or a body over "
    "RANKSTREAM_GATEWAY_MAX_BODY_BYTES.",
    422: "`invalid_request`: the body is not JSON, not an object, or a field is missing or "
    "wrong; the message says which and what to send.",
    429: "`overloaded`: the work queued ahead would miss this request's deadline; retry "
    "after `Retry-After` seconds.",
    500: "`model_error`, `store_error` or `internal`: a worker failed.",
    503: "`unavailable`: NATS, the streams or the workers are not reachable.",
    504: "`expired`: the workers could not answer (or score every document) before the "
    "deadline: send fewer or shorter documents, or allow more time.",
}
RERANK_STATUSES = (413, 422, 429, 500, 503, 504)
HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def error_responses(
    api: Api, settings: Settings, statuses: Iterable[int] = RERANK_STATUSES
) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for a route answering errors in `api`'s shape: each of
    `statuses`, and 401 where tokens are configured."""
    codes = sorted({*statuses, *((401,) if settings.gateway_tokens else ())})
    responses: dict[int | str, dict[str, Any]] = {}
    for status in codes:
        response: dict[str, Any] = {
            "model": ERROR_MODELS[api],
            "description": STATUS_DESCRIPTIONS[status],
        }
        if status in HEADERS:
            response["headers"] = HEADERS[status]
        responses[status] = response
    return responses


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace `app.openapi` with one that declares the bearer scheme (required of every
    route but the open ones where tokens are configured)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "One of RANKSTREAM_GATEWAY_TOKENS (the Cohere SDK's `api_key` is "
            "sent this way). Without tokens configured, any or no token is let in.",
        }
        if settings.gateway_tokens:
            for path, operations in schema.get("paths", {}).items():
                if path in OPEN_PATHS:
                    continue
                for operation in operations.values():
                    operation["security"] = [{SECURITY_SCHEME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def offline_assets() -> Path | None:
    """Swagger UI's and ReDoc's files as the `fastapi-offline` package ships them; None
    when it is not installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install_docs(app: FastAPI) -> None:
    """`/docs` and `/redoc` served with local assets (create the app with `docs_url=None,
    redoc_url=None`)."""
    assets = offline_assets()
    if assets is None:

        @app.get(DOCS_URL, include_in_schema=False)
        async def no_docs() -> HTMLResponse:
            return HTMLResponse(
                "<!doctype html><title>rankstream gateway</title><p>The interactive docs need "
                "the <code>fastapi-offline</code> package (<code>pip install "
                "fastapi-offline</code>), which ships Swagger UI. The OpenAPI document is at <a "
                f'href="{OPENAPI_URL}">{OPENAPI_URL}</a>.</p>'
            )

        return
    app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
