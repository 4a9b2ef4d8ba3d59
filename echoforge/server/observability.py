"""Hooks into :mod:`echoforge.metrics` (Prometheus) when that module is part of this checkout.

The server reports task outcomes, queue waits, synthesis timings and prompt-cache hits
through these few functions; without the metrics module they do nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from typing import Any

metrics: Any = importlib.import_module("echoforge.metrics") if importlib.util.find_spec("echoforge.metrics") else None


def task_finished(outcome: str, wait_s: float | None = None, run_s: float | None = None) -> None:
    if metrics is not None:
        metrics.observe_task(outcome, wait_s, run_s)


def synthesis_done(engine: str, audio_s: float, wall_s: float, ttfa_s: float | None = None) -> None:
    if metrics is not None:
        metrics.observe_synthesis(engine, audio_s, wall_s, ttfa_s)


def prompt_cache(hit: bool) -> None:
    if metrics is not None:
        metrics.record_prompt_cache(hit)


# ------------------------------------------------------------------ keys never reach the logs
_KEY_PATTERNS = [
    # headers as protocol libraries log them at DEBUG: "X-API-Key: …", "Authorization: Bearer …"
    re.compile(r"(?i)((?:x-api-key|authorization|api[_-]?key)['\"]?\s*[:=,]\s*(?:b?['\"])?(?:bearer\s+)?)[^\s'\",&}\]]+"),
    # JSON fields, also when the logged frame is cut off mid-value ('{"api_key": "sk-12…')
    re.compile(r"(?i)(\"(?:api_key|apikey|key|token|authorization)\"\s*:\s*\")[^\"]*\"?"),
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{4,}"),
    re.compile(r"(?i)\b((?:api[_-]?key|access_token|token)=)[^&\s\"']+"),
]


def redact_keys(text: str) -> str:
    """``text`` with anything that looks like an API key masked (``***``)."""
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class KeyRedactingFilter(logging.Filter):
    """A handler filter: every record that reaches the handler has its keys masked (any logger,
    any level: websockets/uvicorn DEBUG lines with handshake headers and frames included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            record.args = tuple(redact_keys(a) if isinstance(a, str) else a for a in record.args)  # the formatter unpacks them
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to logging's own error handling
            return True
        redacted = redact_keys(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACT_LOGGERS = ("", "echoforge", "uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "websockets.server")


def redact_keys_in_logs() -> None:
    """Install :class:`KeyRedactingFilter` on the handlers of the root, EchoForge, uvicorn and
    websockets loggers (idempotent; the app calls it at start-up, after logging is set up)."""
    for name in _REDACT_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, KeyRedactingFilter) for f in handler.filters):
                handler.addFilter(KeyRedactingFilter())
