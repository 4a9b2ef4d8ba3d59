"""``GET /metrics``: Prometheus text exposition of :mod:`echoforge.metrics`.

Auth: when API keys are configured and ``server.metrics_require_key`` is true (the default),
a scrape needs a key like every other route (``Authorization: Bearer <key>`` or
``X-API-Key``), checked by the server's own :func:`echoforge.server.deps.authenticate`.
With ``ECHOFORGE_SERVER__METRICS_REQUIRE_KEY=false`` the endpoint is open (keep it then on
a private network). Include this router *without* the app-wide ``Authenticated`` dependency:
it decides itself.

At scrape time the gauges that describe the server's state now (queue depth, running tasks,
the engine in use, its load time) are refreshed from the services, so they are right even
between task events.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from echoforge import metrics
from echoforge.server.deps import authenticate

log = logging.getLogger("echoforge.server")

router = APIRouter(tags=["observability"])


def _services(request: Request) -> Any:
    return getattr(request.app.state, "services", None)


async def metrics_auth(request: Request) -> None:
    """Require an API key for ``/metrics`` when keys are configured and ``metrics_require_key`` is on."""
    services = _services(request)
    if services is None:  # an app without EchoForge's services (e.g. a test app): nothing to protect with
        return
    if not services.settings.server.metrics_require_key:
        return
    await authenticate(request)


def refresh_from_services(services: Any) -> None:
    """Copy the server's current state into the gauges (best effort; never fails a scrape)."""
    try:
        queued, running = services.queue.counts()
        metrics.set_queue_depth(queued)
        metrics.set_tasks_running(running)
    except Exception as exc:
        log.debug("queue counts unavailable for /metrics: %s", exc)
    try:
        info = services.engine.info()
        metrics.set_engine_info(info.name, info.model, info.device, info.is_fallback)
        if services.model_load_s:
            metrics.set_model_load_time(info.name, services.model_load_s)
    except Exception as exc:
        log.debug("engine info unavailable for /metrics: %s", exc)


@router.get(
    "/metrics",
    dependencies=[Depends(metrics_auth)],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format 0.0.4."}},
)
async def get_metrics(request: Request) -> Response:
    """Requests, queue, engine speed (RTF, time to first audio, frames/s), agent latency, memory."""
    services = _services(request)
    if services is not None:
        refresh_from_services(services)
    return Response(content=metrics.render(), media_type=metrics.CONTENT_TYPE)
