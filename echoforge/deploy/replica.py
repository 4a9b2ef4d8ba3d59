"""The engine deployment: one replica = one engine + its :class:`SynthesisService` on one device.

Each replica loads the configured engine (CSM on its GPU with the continuous-batching frame
scheduler, or a fallback on CPUs), warms it up, and serves three calls from the ingress:
:meth:`EngineReplica.describe` (what it is), :meth:`EngineReplica.generate` (a streaming
generator: one header dict naming the replica, then float32 chunks as the engine makes them)
and :meth:`EngineReplica.encode_prompt` (a voice's reference clip → the engine's prompt, e.g.
Mimi codes). Nothing here imports Ray at module level except the replica-context lookup, so the
class can be unit-tested in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from echoforge.engines.base import Segment, SynthesisRequest, TTSEngine, engine_concurrency
from echoforge.logging import setup_logging
from echoforge.server.app import load_engine
from echoforge.server.services.synthesis import SynthesisService
from echoforge.server.services.voices import VoiceStore

if TYPE_CHECKING:
    from echoforge.config import Settings

log = logging.getLogger("echoforge.deploy.replica")

EngineFactory = Callable[["Settings"], TTSEngine]


def _replica_id() -> str:
    """Ray Serve's replica id (``<unique id>``), or ``<host>-<pid>`` outside a replica."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return f"{socket.gethostname()}-{os.getpid()}"


class EngineReplica:
    """One engine on one device, behind a Ray Serve deployment (``num_gpus: 1`` per GPU).

    Args:
        settings: the application's settings (the same object the ingress uses).
        engine_factory: builds the engine (default: ``settings.engine`` through the registry).
    """

    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None) -> None:
        setup_logging(settings.log_level, settings.log_format)
        self.settings = settings
        if engine_factory is None:
            self.engine, self.load_s = load_engine(settings)
        else:
            self.engine, self.load_s = engine_factory(settings), 0.0
        s = settings.server
        self.voices = VoiceStore(
            settings.data_dir, max_upload_seconds=s.max_upload_seconds, max_upload_bytes=int(s.max_upload_mb * 2**20)
        )
        # The replica's own service: its slots (CSM scheduler rows / fallback pool), admission and
        # the worker threads that keep engine work off this replica's event loop.
        self.synthesis = SynthesisService(self.engine, self.voices, settings)
        self.warm_s = self.synthesis.warm_up()
        self.replica_id = _replica_id()
        info = self.engine.info()
        log.info(
            "engine replica %s: %s on %s (pid %d), %d slot(s), loaded in %.1f s, warmed up in %.2f s",
            self.replica_id, info.name, info.device, os.getpid(), self.synthesis.concurrency, self.load_s, self.warm_s,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """What this replica runs: engine info, voices, rate, slots, pid, host."""
        info = self.engine.info()
        return {
            "replica": self.replica_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "name": self.engine.name,
            "sample_rate": int(self.engine.sample_rate),
            "is_fallback": bool(self.engine.is_fallback),
            "info": dataclasses.asdict(info),
            "voices": [dataclasses.asdict(v) for v in self.engine.voices()],
            "slots": self.synthesis.concurrency,
            "engine_slots": engine_concurrency(self.engine),
            "load_s": self.load_s,
            "warm_s": self.warm_s,
        }

    def stats(self) -> dict[str, Any]:
        """Slots in use / waiting, synthesis counters and (CSM) scheduler counters."""
        return {
            "replica": self.replica_id,
            "pid": os.getpid(),
            "in_use": self.synthesis._slots.in_use,
            "waiting": self.synthesis._slots.waiting,
            "capacity": self.synthesis.concurrency,
            "stats": dataclasses.asdict(self.synthesis.stats),
            "scheduler": getattr(self.engine, "scheduler_stats", lambda: None)(),
        }

    async def generate(self, request: SynthesisRequest) -> AsyncIterator[Any]:
        """Stream one request: a header ``{"replica", "pid"}``, then float32 chunks.

        Closing the generator (the client went away, Ray cancelled the call) closes the
        service's stream, which stops the engine (CSM drops the row at the next frame).
        """
        yield {"replica": self.replica_id, "pid": os.getpid()}
        async with contextlib.aclosing(self.synthesis.stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    def encode_prompt(self, segment: Segment) -> Segment:
        """A voice's reference segment → the engine's prompt (CSM: Mimi codes ``[frames, 32]``)."""
        encode = getattr(self.engine, "encode_prompt", None)  # CSM: Mimi codes, a long clip trimmed
        return encode(segment) if encode is not None else segment

    def check_health(self) -> None:
        """Ray Serve's periodic health check: a replica whose service is closed is restarted."""
        if self.synthesis._executor._shutdown:  # type: ignore[attr-defined]
            raise RuntimeError("synthesis service is closed")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.synthesis.close()
            close = getattr(self.engine, "close", None) or getattr(self.engine, "unload", None)
            if callable(close):
                close()
