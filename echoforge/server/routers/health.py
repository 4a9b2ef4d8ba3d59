"""``GET /api/health``: liveness + readiness (no API key needed)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from echoforge import __version__
from echoforge.agent.config import agent_settings
from echoforge.agent.models import agent_status
from echoforge.server.deps import ServicesDep
from echoforge.server.schemas import Health
from echoforge.text import max_audio_seconds

log = logging.getLogger("echoforge.server")
router = APIRouter(tags=["health"])


_READY: dict[int, bool] = {}  # id(services) → every replica ran once (start-up done)


def _replicas_ready(services, replicas: dict) -> bool:  # noqa: ANN001 - Services
    """Ray Serve: ready once every target replica has been running; after that (autoscaling
    up and down), ready while at least one replica runs."""
    running = replicas.get("running") or 0
    if _READY.get(id(services)):
        return running > 0
    if running >= replicas["target"]:
        _READY[id(services)] = True
        return True
    return False


@router.get(
    "/api/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Degraded: the task queue is unreachable (see queue.error, Retry-After)"}},
)
async def health(services: ServicesDep, request: Request, response: Response) -> dict:
    """Engine in use (CSM or a fallback), queue depth, whether API keys are required.

    ``503`` with ``status: "degraded"`` when the task queue (Redis, SQLite) cannot be reached
    (streaming still works, queued generation does not), and on Ray Serve until every engine
    replica is running (``replicas.running < replicas.target``).
    """
    info = services.engine.info()
    queue: dict = {"backend": services.queue.backend, "reachable": True}
    try:
        queued, running = await run_in_threadpool(services.queue.counts)
        queue.update(depth=queued, running=running)
    except Exception as exc:  # Redis down, SQLite unavailable: say so instead of a 500
        log.warning("health: the %s task queue is unreachable: %s", services.queue.backend, exc)
        queue.update(depth=0, running=0, reachable=False, error=f"the {services.queue.backend} task queue is unreachable")
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    replicas = getattr(services.engine, "replicas", lambda: None)()  # Ray Serve (echoforge.deploy)
    ready = queue["reachable"]
    if replicas and replicas.get("target") and not _replicas_ready(services, replicas):
        # Readiness waits for every engine replica: a load balancer should not send traffic yet.
        ready = False
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    return {
        "status": "ok" if ready else "degraded",
        "version": __version__,
        "engine": {
            "name": info.name,
            "is_fallback": info.is_fallback,
            "model": info.model,
            "device": info.device,
            "sample_rate": services.engine.sample_rate,
            "description": info.description,
            "smoke_test": info.smoke_test,
        },
        "queue": queue,
        # Streams generating now / waiting for a slot (CSM's continuous-batching scheduler; fallbacks: slots).
        "streams": {
            "in_use": services.synthesis._slots.in_use,
            "waiting": services.synthesis._slots.waiting,
            "capacity": services.synthesis.concurrency,
            "scheduler": getattr(services.engine, "scheduler_stats", lambda: None)(),
        },
        "replicas": replicas,
        # The agent page's facts, without loading the agent: an empty knowledge base, the LLM backend.
        "agent": agent_status(agent_settings(services.settings), services.settings.data_dir, getattr(request.app.state, "agent_models", None)),
        "auth_required": services.keys.required,
        "uptime_s": round(time.time() - services.started_at, 3),
        "model_load_s": round(services.model_load_s, 3),
        "limits": {
            "max_text_chars": services.settings.server.max_text_chars,
            "max_upload_mb": services.settings.server.max_upload_mb,
            "max_upload_seconds": services.settings.server.max_upload_seconds,
            # The audio limit follows from the text limit: any accepted text is spoken in full.
            "max_audio_s": round(
                max(services.settings.generation.max_audio_length_ms / 1000, max_audio_seconds(services.settings.server.max_text_chars)), 1
            ),
        },
    }
