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
