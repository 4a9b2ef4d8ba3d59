"""Domain errors and the one exception handler that turns them into OpenAI-shaped responses.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with
the right status (400/401/403/404/409/413/422/429/503) and ``Retry-After`` where a client
should come back later. Nothing reaches the client as a bare 500 or a traceback: an
unexpected exception is logged with its traceback and answered with a generic 500 body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from echoforge.audio import AudioDecodeError, AudioTooLong
from echoforge.engines.base import EngineBusy, EngineError, EngineUnavailable

log = logging.getLogger("echoforge.server")


class ApiError(Exception):
    """Base of every error the API reports on purpose."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.retry_after = retry_after


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    type = "permission_error"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class Unavailable(ApiError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


QUEUE_RETRY_AFTER_S = 5.0


def _queue_outage_errors() -> list[type[Exception]]:
    """Exceptions that mean the task queue's store is down (Redis unreachable, SQLite locked/unavailable)."""
    import sqlite3

    types: list[type[Exception]] = [sqlite3.OperationalError]
    try:
        import redis.exceptions as rex
    except ImportError:  # the redis extra is not installed
        return types
    return [*types, rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError]


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: ApiError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(round(exc.retry_after))))
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status, headers=headers)


_SINGULAR = {"turns": "turn", "context": "context turn", "voices": "voice", "tasks": "task"}


def _label(loc: list[Any]) -> str:
    """A field path in the user's terms: ``turns.3.text`` → ``turn 4 text`` (1-based)."""
    words: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if words and i > 0 and isinstance(loc[i - 1], str):
                words[-1] = _SINGULAR.get(str(loc[i - 1]), str(loc[i - 1]))
            words.append(str(part + 1))
        else:
            words.append(str(part).replace("_", " "))
    return " ".join(words)


def _describe(error: dict[str, Any]) -> str:
    msg = str(error.get("msg", "invalid value"))
    kind = error.get("type", "")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    return msg[:1].lower() + msg[1:]


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":  # loc is a byte offset, msg pydantic's: say it plainly
        reason = (first.get("ctx") or {}).get("error", "")
        offset = next((p for p in first.get("loc", ()) if isinstance(p, int)), None)
        where = f" at character {offset + 1}" if offset is not None else ""
        return f"the request body is not valid JSON{where}" + (f" ({reason[:1].lower()}{reason[1:]})" if reason else ""), None
    raw = [p for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
    param = ".".join(str(p) for p in raw) or None
    msg = _describe(first)
    if len(errors) > 1:
        others = sorted({_label([p for p in e.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]) for e in errors[1:]} - {""})
        more = f"; also check {', '.join(others[:4])}" if others else f" (and {len(errors) - 1} more problem(s))"
    else:
        more = ""
    return (f"{_label(raw)} {msg}{more}" if raw else msg + more), param


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; validation errors become 400 on /v1 (like OpenAI) and 422 on /api."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        status = 400 if request.url.path.startswith("/v1/") else 422
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(
            error_body(str(exc.detail), type_, None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(AudioDecodeError)
    async def _audio(request: Request, exc: AudioDecodeError) -> JSONResponse:
        if isinstance(exc, AudioTooLong):
            return error_response(PayloadTooLarge(f"audio: {exc}", param="audio", code="audio_too_long"))
        return JSONResponse(error_body(str(exc), "invalid_request_error", "audio", "invalid_audio"), status_code=400)

    for exc_type in _queue_outage_errors():

        @app.exception_handler(exc_type)
        async def _queue_down(request: Request, exc: Exception) -> JSONResponse:
            log.warning("task queue unreachable on %s %s: %s", request.method, request.url.path, exc)
            return error_response(
                Unavailable(
                    "the task queue is unreachable right now; retry after the time in Retry-After",
                    code="queue_unavailable",
                    retry_after=QUEUE_RETRY_AFTER_S,
                )
            )

    @app.exception_handler(EngineBusy)
    async def _engine_busy(request: Request, exc: EngineBusy) -> JSONResponse:
        return error_response(Unavailable(str(exc), retry_after=exc.retry_after))

    @app.exception_handler(EngineUnavailable)
    async def _engine_unavailable(request: Request, exc: EngineUnavailable) -> JSONResponse:
        return error_response(Unavailable(str(exc), retry_after=30))

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError) -> JSONResponse:
        log.warning("engine error on %s: %s", request.url.path, exc)
        return JSONResponse(
            error_body(str(exc), "server_error", None, "engine_error"), status_code=503, headers={"Retry-After": "5"}
        )

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error", None, "invalid_value"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal server error", "server_error", None, "internal_error"), status_code=500
        )
