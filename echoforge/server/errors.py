"""Domain errors and the one exception handler that turns them into OpenAI-shaped responses.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with
the right status (400/401/403/404/409/413/422/429/503) and ``Retry-After`` where a client
should come back later. Nothing reaches the client as a bare 500 or a traceback: an
unexpected exception is logged with its traceback and answered with a generic 500 body.
"""

from __future__ import annotations

import logging
from typing import Any, get_args

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


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation (``Turn``, ``list[Turn]``, ``Turn | None``), or ``None``."""
    if hasattr(annotation, "model_fields"):
        return annotation
    return next((m for a in get_args(annotation) if (m := _model_in(a)) is not None), None)


def _bounds(model: Any, loc: list[Any]) -> tuple[Any, Any]:
    """The (lower, upper) limits declared on the field at ``loc`` of ``model`` (``None`` where unknown)."""
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if isinstance(part, int) or not fields:
            continue
        if part not in fields:
            return None, None
        field = fields[part]
        model = _model_in(field.annotation)
    lower = upper = None
    for meta in getattr(field, "metadata", ()):
        lower = next((getattr(meta, k) for k in ("ge", "gt") if getattr(meta, k, None) is not None), lower)
        upper = next((getattr(meta, k) for k in ("le", "lt") if getattr(meta, k, None) is not None), upper)
    return lower, upper


_TYPES = {
    "float_type": "must be a number", "float_parsing": "must be a number", "int_type": "must be a whole number",
    "int_parsing": "must be a whole number", "int_from_float": "must be a whole number",
    "string_type": "must be text (a JSON string)", "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "list_type": "must be a list", "dict_type": "must be an object",
    "model_type": "must be an object", "model_attributes_type": "must be an object",
}  # fmt: skip
_RANGES = {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}


def _describe(error: dict[str, Any], model: Any = None) -> str:
    """One validation error in plain words: "is required", "is longer than 4096 characters",
    "must be between 0.25 and 4" (pydantic's own wording, "String should have…", never reaches users)."""
    msg = str(error.get("msg", "invalid value"))
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "is required" if n == 1 else f"is shorter than {n} characters"
    if kind == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return f"needs at least {n} item{'s' if n != 1 else ''}"
    if kind == "too_long":
        return f"has more than {ctx.get('max_length')} items"
    if kind in _RANGES:
        loc = [p for p in error.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
        lower, upper = _bounds(model, loc) if model is not None else (None, None)
        if lower is not None and upper is not None:
            return f"must be between {_num(lower)} and {_num(upper)}"
        words = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
                 "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}[kind]  # fmt: skip
        return f"must be {words[0]} {_num(ctx.get(words[1]))}"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected')}" if ctx.get("expected") else "is not one of the allowed values"
    if kind in _TYPES:
        return _TYPES[kind]
    if kind == "value_error" and msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif msg.startswith("Input should"):
        msg = "must" + msg[len("Input should") :]
    return msg[:1].lower() + msg[1:]


def _body_model(request: Request | None) -> Any:
    """The pydantic model of the route's JSON body (for the limits in messages), if any."""
    route = request.scope.get("route") if request is not None else None
    field = getattr(route, "body_field", None)
    return getattr(getattr(field, "field_info", None), "annotation", None)


def _validation_message(exc: RequestValidationError, request: Request | None = None) -> tuple[str, str | None]:
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
    try:
        msg = _describe(first, _body_model(request) if first.get("loc", ("",))[0] == "body" else None)
    except Exception:  # a message is never worth a 500
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
        message, param = _validation_message(exc, request)
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
