"""``GET /api/health``: liveness + readiness (no API key needed)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from echoforge import __version__
from echoforge.server.deps import ServicesDep
from echoforge.server.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=Health)
async def health(services: ServicesDep) -> dict:
    """Engine in use (CSM or a fallback), queue depth, whether API keys are required."""
    info = services.engine.info()
    queued, running = await run_in_threadpool(services.queue.counts)
    return {
        "status": "ok",
        "version": __version__,
        "engine": {
            "name": info.name,
            "is_fallback": info.is_fallback,
            "model": info.model,
            "device": info.device,
            "sample_rate": services.engine.sample_rate,
            "description": info.description,
        },
        "queue": {"backend": services.queue.backend, "depth": queued, "running": running},
        # Streams generating now / waiting for a slot (CSM's continuous-batching scheduler; fallbacks: slots).
        "streams": {
            "in_use": services.synthesis._slots.in_use,
            "waiting": services.synthesis._slots.waiting,
            "capacity": services.synthesis.concurrency,
            "scheduler": getattr(services.engine, "scheduler_stats", lambda: None)(),
        },
        "replicas": getattr(services.engine, "replicas", lambda: None)(),  # Ray Serve (echoforge.deploy)
        "auth_required": services.keys.required,
        "uptime_s": round(time.time() - services.started_at, 3),
        "model_load_s": round(services.model_load_s, 3),
        "limits": {
            "max_text_chars": services.settings.server.max_text_chars,
            "max_upload_mb": services.settings.server.max_upload_mb,
            "max_upload_seconds": services.settings.server.max_upload_seconds,
        },
    }
