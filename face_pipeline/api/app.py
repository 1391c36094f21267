"""The labelling API and its review page: `create_app(settings)` builds one FastAPI application.

Labelling and browsing use SQL only; the vector store is opened per request for suggestions, so a
pipeline run is never blocked by a running server (and a run that holds the store makes that one
endpoint answer 503, nothing else).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from face_pipeline.api.errors import install_error_handlers
from face_pipeline.api.routes import faces, health, persons
from face_pipeline.api.schemas import API_PREFIX
from face_pipeline.services.context import PipelineContext
from face_pipeline.settings import Settings, load_settings

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a label request for a 100,000-face cluster fits; a runaway upload does not
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
# The review page loads nothing from elsewhere; the policy makes an injected script or image inert.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    context = PipelineContext.from_settings(settings)  # upgrades the schema once, before the first request

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        context.close()

    app = FastAPI(
        title="face_pipeline labelling API",
        version="1",
        summary="Review clusters of faces and name the people in a photo library.",
        lifespan=lifespan,
    )
    app.state.context = context
    install_error_handlers(app)
    for router in (faces.router, persons.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_api_route("/", review_page, include_in_schema=False)
    _add_middleware(app, settings)
    return app


def review_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    app.middleware("http")(_limit_body_and_add_headers)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api_cors_origins,
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=["Authorization", "Content-Type"],
        )
    if _is_loopback(settings.api_host):
        # Against DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends
        # "Host: evil.example"; a server only reachable from this machine only needs its own names.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK_NAMES, settings.api_host])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _limit_body_and_add_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    path = request.url.path
    if path == "/" or path.startswith("/static/"):
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        response.headers["X-Frame-Options"] = "DENY"
    return response
