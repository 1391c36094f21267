"""The labelling API and its review page: `create_app(settings)` builds one FastAPI application.

Labelling and browsing use SQL only. Suggestions and the faces on their own are scored from face vectors the
server keeps in memory (services/vector_cache.py), read from the vector store once, in the background at
start (`warm_up`), and then only for faces new since; the store is held only for such a read, so a pipeline
run is never blocked by a running server (and a run that holds the store delays only those reads: a
suggestions request that needs one answers 503, nothing else).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from face_pipeline.api.errors import install_error_handlers
from face_pipeline.api.routes import decisions, faces, health, persons, photos
from face_pipeline.api.schemas import API_PREFIX
from face_pipeline.services.library import Library
from face_pipeline.services.singletons import GuessCache, warm
from face_pipeline.settings import Settings, load_settings
from face_pipeline.storage.vectors import VectorStoreLocked

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a label request for a 100,000-face cluster fits; a runaway upload does not
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
# The review page loads nothing from elsewhere; the policy makes an injected script or image inert.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def create_app(settings: Settings | None = None, *, warm_up: bool = True) -> FastAPI:
    """warm_up: read the vectors of the unnamed faces and score the faces on their own in a background thread
    at start (a second or two for 30,000 faces), so the first suggestions and singletons pages need not."""
    settings = settings or load_settings()
    library = Library.from_settings(settings)  # upgrades the schema once, before the first request
    guesses = GuessCache()  # the server's face vectors and the singletons' best guesses, kept between requests

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warming = threading.Thread(target=_warm, args=(library, guesses, app), name="face-vectors", daemon=True)
        if warm_up:
            warming.start()
        yield
        if warming.is_alive():
            warming.join()
        library.close()

    app = FastAPI(
        title="face_pipeline labelling API",
        version="1",
        summary="Review clusters of faces and name the people in a photo library.",
        lifespan=lifespan,
    )
    app.state.library = library
    app.state.guesses = guesses
    app.state.warmed = threading.Event()  # set when the warm-up is over (done, failed or not asked for)
    if not warm_up:
        app.state.warmed.set()
    install_error_handlers(app)
    for router in (faces.router, persons.router, photos.router, decisions.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_api_route("/", review_page, include_in_schema=False)
    _add_middleware(app, settings)
    return app


def _warm(library: Library, guesses: GuessCache, app: FastAPI) -> None:
    started = time.perf_counter()
    try:
        warm(library, guesses)
    except VectorStoreLocked:
        log.info("face vectors not read at start: a pipeline run holds the vector store (read on first use)")
    except Exception:  # the server works without it: requests read what they need themselves
        log.exception("reading the face vectors at start failed (read on first use)")
    else:
        log.info("face vectors read and singletons scored in %.1f s", time.perf_counter() - started)
    finally:
        app.state.warmed.set()


def review_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.middleware("http")(_add_headers)
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


class BodyLimit:
    """Refuse (413) a request body over `max_bytes`, before the application sees any of it: a declared
    Content-Length is checked first, and a body without one (Transfer-Encoding: chunked) is read here,
    counting, then handed on whole. Bodies are small (the limit is a few MB), so holding one is cheap."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, None, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


def _replay(chunks: list[bytes], last: Message | None, receive: Receive) -> Receive:
    """A receive that gives the body read so far as one message (or `last`), then the client's own."""
    pending: list[Message] = [last] if last is not None else [{"type": "http.request", "body": b"".join(chunks)}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


async def _add_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    path = request.url.path
    if path == "/" or path.startswith("/static/"):
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        response.headers["X-Frame-Options"] = "DENY"
    return response
