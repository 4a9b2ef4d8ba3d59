"""One logging setup for the whole package (stdlib logging, structlog-free on purpose).

Human-readable by default; one JSON object per line with ``log_format="json"``
(``ECHOFORGE_LOG_FORMAT=json``). A request/task id set with :func:`bind_request_id`
travels through every record logged in that context (contextvars work across asyncio
tasks and are copied into worker threads by ``asyncio.to_thread``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("echoforge_request_id", default="-")


def bind_request_id(value: str) -> contextvars.Token:
    return request_id.set(value)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in ("task_id", "route", "status", "duration_ms", "engine"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "console") -> None:
    """Configure the ``echoforge`` logger tree once (idempotent)."""
    root = logging.getLogger("echoforge")
    root.setLevel(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s", "%H:%M:%S"))
    for old in list(root.handlers):
        if getattr(old, "_echoforge", False):
            root.removeHandler(old)
    handler._echoforge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False


# ------------------------------------------------------------------ keys never reach the logs
# One redaction for every log line: the server's own, uvicorn's access / error lines (keys sent
# in URLs: ``/api/stream?api_key=…``) and protocol libraries' DEBUG lines (handshake headers, frames).
_SECRET_PATTERNS = [
    # headers as protocol libraries log them at DEBUG: "X-API-Key: …", "Authorization: Bearer …"
    re.compile(r"(?i)((?:x-api-key|authorization|api[_-]?key)['\"]?\s*[:=,]\s*(?:b?['\"])?(?:bearer\s+)?)[^\s'\",&}\]]+"),
    # JSON fields, also when the logged frame is cut off mid-value ('{"api_key": "sk-12…')
    re.compile(r"(?i)(\"(?:api_key|apikey|key|token|authorization)\"\s*:\s*\")[^\"]*\"?"),
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{4,}"),
    # query parameters
    re.compile(r"(?i)\b((?:api[_-]?key|key|token|access_token|secret|password)=)[^&\s\"']+"),
]


def redact(text: str) -> str:
    """``text`` with anything that looks like a key, token or password masked (``***``)."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class RedactSecretsFilter(logging.Filter):
    """Masks secrets in a record (any logger, any level), on a logger or on a handler.

    uvicorn's access formatter unpacks ``record.args``, so there the string arguments are masked
    and their types kept; elsewhere the formatted message is masked (a key split between the
    format and its arguments is caught too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to logging's own error handling
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _add_filter(target: logging.Logger | logging.Handler) -> None:
    if not any(isinstance(f, RedactSecretsFilter) for f in target.filters):
        target.addFilter(RedactSecretsFilter())


_REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")
_REDACTED_HANDLERS = ("", "echoforge", "uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "websockets.server")


def redact_server_logs() -> None:
    """Mask secrets in every record uvicorn's access and error loggers emit, whatever handlers
    they get later (a logger filter). Idempotent; the metrics middleware installs it."""
    for name in _REDACTED_LOGGERS:
        _add_filter(logging.getLogger(name))


def redact_keys_in_logs() -> None:
    """Mask secrets in every record that reaches the handlers of the root, EchoForge, uvicorn and
    websockets loggers (a handler filter: records of any child logger included). Idempotent; the
    app calls it at start-up, after logging is set up."""
    for name in _REDACTED_HANDLERS:
        for handler in logging.getLogger(name).handlers:
            _add_filter(handler)
