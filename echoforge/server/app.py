"""The FastAPI application factory.

``create_app(settings)`` wires routers, middleware and error handlers; its lifespan builds
the services — engine (``echoforge.engines.create_engine``, loudly logged when it is a
fallback), voice store, task queue, synthesis service, API keys, rate limiter and the
in-process worker pool — warms the engine up, and on shutdown lets running tasks finish or
re-queues them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from echoforge import __version__, metrics
from echoforge.config import Settings, get_settings
from echoforge.engines import create_engine
from echoforge.engines.base import TTSEngine
from echoforge.logging import redact_keys_in_logs
from echoforge.server.deps import Authenticated, Services
from echoforge.server.errors import error_body, install_error_handlers
from echoforge.server.middleware import MetricsMiddleware
from echoforge.server.routers import (
    agent,
    analysis,
    captions,
    diagnostic,
    health,
    openai,
    realtime,
    stream,
    tasks,
    voices,
)
from echoforge.server.routers import metrics as metrics_routes
from echoforge.server.schemas import document_limits
from echoforge.server.services.auth import ApiKeyStore, RateLimiter
from echoforge.server.services.queue_factory import make_queue
from echoforge.server.services.synthesis import SynthesisService
from echoforge.server.services.voices import VoiceStore
from echoforge.server.services.worker import TaskRunner, WorkerPool

log = logging.getLogger("echoforge.server")
security_log = logging.getLogger("echoforge.security")

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
# Routers other parts of EchoForge provide (``router`` in each module), included when present:
# name → whether the app-wide API-key dependency applies (WebSocket and /metrics check keys themselves).
class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes`` (by Content-Length, or counted while reading)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit_mb = self.max_bytes / (1024 * 1024)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            security_log.warning(
                "rejected request body: %s bytes on %s (limit %d)", declared.decode(), scope["path"], self.max_bytes
            )
            body = json.dumps(
                error_body(
                    f"request body is larger than the {limit_mb:.0f} MB limit",
                    "invalid_request_error",
                    None,
                    "payload_too_large",
                )
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    from starlette.exceptions import HTTPException

                    security_log.warning(
                        "rejected streamed request body over %d bytes on %s", self.max_bytes, scope["path"]
                    )
                    raise HTTPException(413, f"request body is larger than the {limit_mb:.0f} MB limit")
            return message

        await self.app(scope, limited, send)


def build_services(
    settings: Settings,
    engine: TTSEngine,
    model_load_s: float,
    *,
    start_workers: bool = True,
    defer_workers: bool = False,
    synthesis_factory: Callable[[TTSEngine, VoiceStore, Settings], SynthesisService] = SynthesisService,
) -> Services:
    """Everything but the engine; also used by ``echoforge worker``.

    ``synthesis_factory`` builds the synthesis service (``echoforge.deploy`` passes one whose
    engine runs on Ray Serve replicas; it keeps :class:`SynthesisService`'s interface).
    ``defer_workers``: build the worker pool but let the caller start it (the app starts it
    after the warm-up, so tasks re-queued after a crash never hold the engine slot first).
    """
    s = settings.server
    voices = VoiceStore(
        settings.data_dir, max_upload_seconds=s.max_upload_seconds, max_upload_bytes=int(s.max_upload_mb * 1024 * 1024)
    )
    queue = make_queue(settings)
    synthesis = synthesis_factory(engine, voices, settings)
    keys = ApiKeyStore(settings.data_dir, [k.get_secret_value() for k in s.api_keys])
    pool = None
    if start_workers:
        # One claimer per engine slot (server.workers for CSM, the engine's max_concurrency for the fallbacks).
        pool = WorkerPool(queue, TaskRunner(queue, synthesis, settings), synthesis.concurrency)
        if not defer_workers:
            pool.start()
    return Services(
        settings=settings,
        engine=engine,
        voices=voices,
        queue=queue,
        synthesis=synthesis,
        keys=keys,
        limiter=RateLimiter(s.rate_limit_per_minute),
        auth_failures=RateLimiter(s.auth_failures_per_minute),
        pool=pool,
        model_load_s=model_load_s,
    )


def load_engine(settings: Settings, engine_name: str | None = None) -> tuple[TTSEngine, float]:
    """Create the engine, timing it and shouting when it is a fallback."""
    t0 = time.perf_counter()
    engine = create_engine(settings, engine_name)
    load_s = time.perf_counter() - t0
    info = engine.info()
    if info.is_fallback:
        log.warning("=" * 72)
        log.warning("SERVING WITH THE %s FALLBACK ENGINE — NOT CSM. %s", info.name.upper(), info.description)
        log.warning("=" * 72)
    else:
        log.info("engine %s (%s on %s) loaded in %.1f s", info.name, info.model, info.device, load_s)
    return engine, load_s


def create_app(
    settings: Settings | None = None,
    *,
    engine_name: str | None = None,
    engine: TTSEngine | None = None,
    synthesis_factory: Callable[[TTSEngine, VoiceStore, Settings], SynthesisService] = SynthesisService,
) -> FastAPI:
    """Build the app. ``engine_name`` overrides ``settings.engine``; ``engine`` injects a ready one;
    ``synthesis_factory`` replaces the synthesis service (see :func:`build_services`)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:  # injected (tests, Ray Serve): its own load time when it knows it
            eng, load_s = engine, float(getattr(engine, "load_s", 0.0) or 0.0)
        else:
            eng, load_s = await asyncio.to_thread(load_engine, settings, engine_name)
        services = await asyncio.to_thread(
            build_services, settings, eng, load_s, defer_workers=True, synthesis_factory=synthesis_factory
        )
        redact_keys_in_logs()
        # Warm up before the workers claim anything: after a crash the re-queued tasks would
        # otherwise take the engine slot first and the port would open only when they finish.
        warm_s = await asyncio.to_thread(services.synthesis.warm_up)
        if services.pool is not None:
            services.pool.start()
        metrics.set_model_load_time(eng.name, warm_s, phase="warmup")
        log.info(
            "engine warmed up in %.2f s; auth %s",
            warm_s,
            "on" if services.keys.required else "off (no API keys configured)",
        )
        app.state.services = services
        try:
            yield
        finally:
            if services.pool is not None:
                await asyncio.to_thread(services.pool.stop, settings.server.shutdown_grace_s)
            services.synthesis.close()
            services.queue.close()
            close = getattr(eng, "close", None) or getattr(eng, "unload", None)
            if engine is None and callable(close):
                close()

    docs_open = not settings.server.docs_require_key
    app = FastAPI(
        title="EchoForge",
        version=__version__,
        description="Local-first conversational voice server (CSM-1B): EchoForge task API, OpenAI-compatible speech API, WebSocket streaming.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs_open else None,
        docs_url=None,  # served by _add_docs, from local assets (never a CDN)
        redoc_url=None,
    )
    _add_docs(app, private=not docs_open)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.server.max_upload_mb * 1024 * 1024) + 64 * 1024)
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Request-ID"],
        )
    app.add_middleware(MetricsMiddleware)  # request metrics + request id + access log

    app.include_router(health.router)
    for module in (voices, tasks, openai, diagnostic):
        app.include_router(module.router, dependencies=[Authenticated])
    app.include_router(stream.router)  # authenticates in the handshake (query or first message)
    for module in (analysis, captions):
        app.include_router(module.router, dependencies=[Authenticated])
    # These authenticate themselves: agent / realtime in the WebSocket handshake, /metrics by server.metrics_require_key.
    for module in (agent, realtime, metrics_routes):
        app.include_router(module.router)

    _openapi = app.openapi  # the schema says the configured text limit (server.max_text_chars)
    app.openapi = lambda: document_limits(_openapi(), settings.server.max_text_chars)  # type: ignore[method-assign]

    if (STATIC_DIR / "index.html").is_file():
        app.mount("/", StudioFiles(app, StaticFiles(directory=STATIC_DIR, html=True)), name="studio")
    return app


DOCS_ASSETS = "/docs-assets"


def _docs_assets_dir() -> Path | None:
    """Swagger UI and ReDoc bundles shipped in a PyPI package (``fastapi-offline``), if installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).parent / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() and (path / "redoc.standalone.js").is_file() else None


def _add_docs(app: FastAPI, *, private: bool) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` from local assets: they work offline (no CDN, no web fonts).

    ``private`` (``server.docs_require_key``): the schema and the two pages need an API key (when
    keys exist); the static script bundles stay open (they hold nothing of this server).
    """
    assets = _docs_assets_dir()
    if assets is None:
        log.warning(
            "fastapi-offline is not installed: /docs and /redoc load their scripts from a CDN (pip install fastapi-offline)"
        )
        js, css, redoc_js, favicon = (None,) * 4
    else:
        redoc_bundle: list[bytes] = []

        # ReDoc's bundle hard-codes its logo from a CDN: served with the logo pointed at a local file.
        @app.get(f"{DOCS_ASSETS}/redoc.standalone.js", include_in_schema=False)
        def _redoc_js() -> Response:
            if not redoc_bundle:
                js = (assets / "redoc.standalone.js").read_bytes()
                redoc_bundle.append(
                    js.replace(b"https://cdn.redoc.ly/redoc/logo-mini.svg", f"{DOCS_ASSETS}/favicon.png".encode())
                )
            return Response(
                redoc_bundle[0], media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
            )

        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
        js, css, redoc_js = (
            f"{DOCS_ASSETS}/{n}" for n in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
        )
        favicon = "/favicon.svg" if (STATIC_DIR / "favicon.svg").is_file() else f"{DOCS_ASSETS}/favicon.png"
    deps = [Authenticated] if private else []
    oauth2_redirect = "/docs/oauth2-redirect"

    def swagger_kwargs() -> dict:
        kw = {"swagger_js_url": js, "swagger_css_url": css, "swagger_favicon_url": favicon}
        return {k: v for k, v in kw.items() if v is not None}

    if private:

        @app.get("/openapi.json", include_in_schema=False, dependencies=deps)
        def _openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=deps)
    def _docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="EchoForge - API docs",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
            **swagger_kwargs(),
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    def _docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False, dependencies=deps)
    def _redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        kw = {"redoc_js_url": redoc_js, "redoc_favicon_url": favicon} if redoc_js else {}
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json", title="EchoForge - ReDoc", with_google_fonts=assets is None, **kw
        )


API_PREFIXES = ("/api/", "/v1/", "/metrics")


class StudioFiles:
    """The studio's static files at ``/``, except under the API prefixes: there a path that
    matches a route with other methods is ``405`` with its real ``Allow`` header, and any
    other path a JSON ``404`` (never the static mount's answers)."""

    def __init__(self, app: FastAPI, files: ASGIApp) -> None:
        self.api = app
        self.files = files
        self._table: list[tuple[re.Pattern[str], set[str]]] | None = None

    def _routes(self) -> list[tuple[re.Pattern[str], set[str]]]:
        """(path regex, methods) of every documented route, from the OpenAPI schema."""
        if self._table is None:
            table = []
            for template, ops in self.api.openapi().get("paths", {}).items():
                regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
                table.append((re.compile(regex), {m.upper() for m in ops if m.isalpha()}))
            self._table = table
        return self._table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith(API_PREFIXES) or path == "/api"):
            await self.files(scope, receive, send)
            return
        allowed = {m for pattern, methods in self._routes() if pattern.fullmatch(path) for m in methods}
        if allowed:
            status, message, code = (
                405,
                f"{scope['method']} is not allowed on {path}; use {', '.join(sorted(allowed))}",
                "method_not_allowed",
            )
        else:
            status, message, code = 404, f"no API route {path}; see /docs", "not_found"
        body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if allowed:
            headers.append((b"allow", ", ".join(sorted(allowed)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
