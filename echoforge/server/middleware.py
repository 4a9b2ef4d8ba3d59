"""The server's ASGI middleware: request metrics by route template, a request id per request,
one access-log line per request, and secrets kept out of uvicorn's log lines.

The metric objects are :mod:`echoforge.metrics`'s (``echoforge_http_requests_total``,
``…_http_request_duration_seconds``, ``…_http_requests_in_progress``); the redaction is
:mod:`echoforge.logging`'s.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from starlette.routing import Match, Mount

from echoforge import metrics
from echoforge.logging import bind_request_id, redact_server_logs, request_id

log = logging.getLogger("echoforge.access")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_ROUTES = frozenset({"/metrics", "/api/health"})
UNMATCHED = "<unmatched>"


def route_template(app: Any, scope: dict) -> str:
    """The route template (``/api/tasks/{task_id}``) that matches ``scope``, or ``<unmatched>``.

    Raw paths are never used as labels: ids in them would make one series per request.
    """
    routes = getattr(app, "routes", None) or getattr(getattr(app, "router", None), "routes", None) or []
    return _match(routes, scope, "") or UNMATCHED


def _flatten(routes: list) -> Iterator[Any]:
    for route in routes:
        # Recent FastAPI keeps included routers nested (``_IncludedRouter``); their effective
        # routes carry the full path (prefix included). Duck-typed, so older versions work too.
        expand = getattr(route, "effective_candidates", None)
        if callable(expand):
            try:
                yield from _flatten(expand())
                continue
            except Exception:
                pass
        if getattr(route, "path_regex", None) is None and not isinstance(route, Mount):
            inner = getattr(route, "starlette_route", None) or getattr(route, "original_route", None)
            if inner is not None:
                route = inner
        yield route


def _match(routes: list, scope: dict, prefix: str) -> str | None:
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    method = scope.get("method")
    partial = None
    for route in _flatten(routes):
        if isinstance(route, Mount):
            try:
                match, child = route.matches(scope)
            except Exception:
                continue
            if match is Match.NONE:
                continue
            sub = getattr(route, "routes", None)
            if sub:
                inner = _match(sub, {**scope, **child}, prefix + route.path)
                if inner:
                    return inner
            return prefix + route.path_format
        regex = getattr(route, "path_regex", None)
        if regex is None or not regex.match(path):
            continue
        template = prefix + (getattr(route, "path_format", None) or getattr(route, "path", "") or "/")
        methods = getattr(route, "methods", None)
        if scope.get("type") == "http" and methods and method not in methods:
            partial = partial or template  # right path, wrong method → 405
            continue
        return template
    return partial


class MetricsMiddleware:
    """Pure ASGI middleware: request metrics by route template, and a request id per request.

    The id comes from the client's ``X-Request-ID`` header when it is sane (≤ 128 of
    ``[A-Za-z0-9._:-]``), otherwise a fresh one; it is bound with
    :func:`echoforge.logging.bind_request_id` for every log line of the request and sent
    back in the ``X-Request-ID`` response header. One access-log line per request goes to
    the ``echoforge.access`` logger (DEBUG for ``/metrics`` and ``/api/health``); it names the
    route template, never the query string. It also installs :func:`redact_server_logs`, so
    uvicorn's own access / WebSocket lines do not carry keys sent in URLs.
    WebSocket connections get a request id too, but no HTTP metrics.

    Usage: ``app.add_middleware(MetricsMiddleware)``.
    """

    def __init__(self, app: Any, access_log: bool = True):
        self.app = app
        self.access_log = access_log
        redact_server_logs()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = _incoming_request_id(scope)
        if rid is None:
            rid = uuid.uuid4().hex[:16]
            # Hand the id on in the scope too, so inner middleware and handlers that read the
            # header see the same id as the logs and the response.
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"x-request-id"]
            scope = {**scope, "headers": [*headers, (b"x-request-id", rid.encode("latin-1"))]}
        token = bind_request_id(rid)
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, _with_request_id(send, rid, "websocket.accept"))
                return
            await self._http(scope, receive, send, rid)
        finally:
            request_id.reset(token)

    async def _http(self, scope: dict, receive: Any, send: Any, rid: str) -> None:
        method = scope.get("method", "GET")
        original = dict(scope)  # routing mutates scope (root_path, route); match on the original
        status = 500
        t0 = time.perf_counter()
        metrics.HTTP_IN_PROGRESS.labels(method=method).inc()

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - t0
            metrics.HTTP_IN_PROGRESS.labels(method=method).dec()
            route = route_template(scope.get("app") or original.get("app"), original)
            method_label = method if method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS") else "OTHER"
            metrics.HTTP_REQUESTS.labels(method=method_label, route=route, status=str(status)).inc()
            metrics.HTTP_LATENCY.labels(method=method_label, route=route).observe(elapsed)
            if self.access_log:
                level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
                # The raw query string is never logged: it may carry a key (?api_key=…).
                log.log(
                    level, "%s %s %d %.1f ms", method, route, status, elapsed * 1000,
                    extra={"route": route, "status": status, "duration_ms": round(elapsed * 1000, 1)},
                )


def _incoming_request_id(scope: dict) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            try:
                candidate = value.decode("latin-1").strip()
            except Exception:
                return None
            return candidate if _REQUEST_ID_OK.match(candidate) else None
    return None


def _with_request_id(send: Any, rid: str, message_type: str) -> Any:
    async def wrapper(message: dict) -> None:
        if message["type"] == message_type:
            headers = list(message.get("headers", []))
            headers.append((b"x-request-id", rid.encode("latin-1")))
            message = {**message, "headers": headers}
        await send(message)

    return wrapper


__all__ = ["UNMATCHED", "MetricsMiddleware", "route_template"]
