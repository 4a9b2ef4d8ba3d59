"""``GET /api/diagnostic``: an engine self-test plus torch/CUDA/memory facts and the (redacted) config."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from echoforge import __version__
from echoforge.server.deps import RateLimitedDep, ServicesDep
from echoforge.server.schemas import ERROR_RESPONSES

router = APIRouter(prefix="/api", tags=["diagnostic"], responses=ERROR_RESPONSES)


def _memory() -> dict:
    facts: dict = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {
                line.split(":")[0]: int(line.split()[1])
                for line in f
                if line.split()[1:2] and line.split()[1].isdigit()
            }
        facts["total_mb"] = round(info.get("MemTotal", 0) / 1024)
        facts["available_mb"] = round(info.get("MemAvailable", 0) / 1024)
    except OSError:
        pass
    try:
        import resource

        facts["process_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    except ImportError:
        pass
    return facts


def _torch() -> dict:
    if "torch" not in sys.modules:  # the engine does not use torch: importing it here would cost seconds
        return {"installed": importlib.util.find_spec("torch") is not None, "loaded": False}
    import torch

    facts = {
        "installed": True,
        "loaded": True,
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        facts["devices"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_total_mb": round(torch.cuda.get_device_properties(i).total_memory / 2**20),
                "memory_allocated_mb": round(torch.cuda.memory_allocated(i) / 2**20),
            }
            for i in range(torch.cuda.device_count())
        ]
    return facts


@router.get("/diagnostic")
async def diagnostic(services: ServicesDep, _: RateLimitedDep) -> dict:
    """Run a short phrase through the engine and report timings, RTF, hardware and config."""
    self_test = await run_in_threadpool(services.synthesis.self_test)
    s = services.synthesis.stats
    return {
        "version": __version__,
        "engine": {**services.engine.info().__dict__, "sample_rate": services.engine.sample_rate},
        "self_test": self_test,
        "synthesis": {
            "concurrency": services.synthesis.concurrency,
            "requests": s.requests,
            "streams": s.streams,
            "scheduler": getattr(services.engine, "scheduler_stats", lambda: None)(),
        },
        "torch": await run_in_threadpool(_torch),
        "memory": _memory(),
        "system": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "config": services.settings.redacted(),
    }
