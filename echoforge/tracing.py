"""Optional OpenTelemetry tracing, with a no-op fallback.

``span(name, **attrs)`` is a context manager every part may wrap its stages in, and
:func:`record_span` emits a span for a stage measured elsewhere: :mod:`echoforge.metrics` does so
for every engine synthesis (``engine.synthesize``), queue wait and task run (``queue.wait``,
``task.run``) and agent stage (``agent.transcript`` … ``agent.voice_to_voice``) it records.
Without OpenTelemetry it costs nothing and does nothing; with ``opentelemetry-api`` it uses the globally configured tracer provider, and
:func:`setup_tracing` (called once by ``echoforge serve`` / ``echoforge worker`` / ``echoforge
agent``) installs one from the SDK when the ``otel`` extra is installed
(``pip install 'echoforge[otel]'``).

The exporter is chosen with OpenTelemetry's own environment variables:

- ``OTEL_TRACES_EXPORTER=otlp`` (needs ``opentelemetry-exporter-otlp``; endpoint from
  ``OTEL_EXPORTER_OTLP_ENDPOINT``), ``console`` (spans printed as JSON to stderr) or ``none``
  (the default: tracing is off unless asked for);
- ``OTEL_SERVICE_NAME`` (default ``echoforge``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("echoforge.tracing")

try:  # the API alone is a no-op until a provider is installed
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised by the no-op test via monkeypatching
    _trace = None

_TRACER_NAME = "echoforge"
_configured = False


def enabled() -> bool:
    """True when spans go to a real (non no-op) tracer provider."""
    if _trace is None:
        return False
    provider = _trace.get_tracer_provider()
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    # OpenTelemetry attributes must be str/bool/int/float (or sequences of them); drop None.
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return out


@contextmanager
def span(name: str, **attrs: Any) -> Iterator[Any]:
    """A span named ``name`` with attributes ``attrs`` around the ``with`` body.

    Yields the OpenTelemetry span (or ``None`` when tracing is unavailable). An exception
    leaving the body is recorded on the span and re-raised.

    Example::

        with span("engine.synthesize", engine="csm", chars=len(text)):
            audio = engine.synthesize(request)
    """
    if _trace is None:
        yield None
        return
    tracer = _trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(name, attributes=_clean(attrs)) as current:
        yield current


def record_span(name: str, duration_s: float, end_ns: int | None = None, **attrs: Any) -> None:
    """Emit an already finished span of ``duration_s`` seconds ending at ``end_ns`` (default: now).

    For stages measured elsewhere (queue wait, engine synthesis, agent stages reported by
    :mod:`echoforge.metrics`): the span gets the real start and end times. No-op unless tracing
    is on.
    """
    if _trace is None or duration_s is None or duration_s < 0 or not enabled():
        return
    end = end_ns if end_ns is not None else time.time_ns()
    tracer = _trace.get_tracer(_TRACER_NAME)
    current = tracer.start_span(name, start_time=end - int(duration_s * 1e9), attributes=_clean(attrs))
    current.end(end_time=end)


def setup_tracing(service_name: str | None = None, exporter: str | None = None) -> bool:
    """Install an SDK tracer provider when asked for and possible; return whether tracing is on.

    Args:
        service_name: ``service.name`` resource attribute (default ``$OTEL_SERVICE_NAME`` or ``echoforge``).
        exporter: ``otlp``, ``console`` or ``none`` (default ``$OTEL_TRACES_EXPORTER`` or ``none``).
    """
    global _configured
    exporter = (exporter or os.environ.get("OTEL_TRACES_EXPORTER") or "none").lower()
    if exporter == "none" or _trace is None:
        return False
    if _configured:
        return True
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER=%s but opentelemetry-sdk is not installed: pip install 'echoforge[otel]'", exporter)
        return False
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # type: ignore[no-redef]
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp but opentelemetry-exporter-otlp is not installed")
                return False
        span_exporter: Any = OTLPSpanExporter()
    elif exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        log.warning("unknown OTEL_TRACES_EXPORTER=%r (use otlp, console or none); tracing stays off", exporter)
        return False
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "echoforge"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    _trace.set_tracer_provider(provider)
    _configured = True
    log.info("OpenTelemetry tracing on (%s exporter, service %s)", exporter, name)
    return True


__all__ = ["enabled", "record_span", "setup_tracing", "span"]
