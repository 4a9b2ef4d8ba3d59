"""The ingress side: the engine deployment seen through a Ray Serve deployment handle.

* :class:`RemoteEngine` implements the engine interface (``TTSEngine``) over the handle, so
  everything above the engine — voice prompts, task workers, ``render_conversation``, the
  agent's TTS — runs unchanged. ``stream`` iterates ``handle.options(stream=True)`` in the
  caller's thread; ``astream`` is the same on the event loop.
* :class:`RemoteSynthesisService` is :class:`SynthesisService` with an ``async`` stream that
  awaits Ray directly (no thread per stream); its slots are the cluster's: replicas ×
  per-replica ``max_ongoing_requests``, with the same ``503 server_overloaded`` admission.
* :class:`ReplicaHeaderMiddleware` adds ``X-EchoForge-Replica`` (the engine replica that made
  the audio, else the ingress replica) and ``X-EchoForge-Ingress`` to every HTTP response, and
  aborts a response whose replica died mid-stream (SSE gets an ``error`` event first) so a
  truncated stream never looks complete.

A replica that dies before a stream's first chunk is retried on another replica; one that
dies mid-stream fails that stream with :class:`ReplicaDied` (tasks retry it like any
transient engine failure). Ray Serve replaces the dead replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Counter, Gauge

from echoforge import metrics
from echoforge.engines.base import EngineError, EngineInfo, Segment, SynthesisRequest, VoiceInfo
from echoforge.server.services.synthesis import SynthesisService

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from echoforge.config import Settings
    from echoforge.server.services.voices import VoiceStore

log = logging.getLogger("echoforge.deploy")

DEATH_RETRIES = 2  # other replicas tried when one dies before a stream's first chunk
SNAPSHOT_EVERY_S = 2.0

REPLICAS = Gauge(
    "echoforge_replicas", "Engine replicas of the Ray Serve deployment by state (RUNNING, STARTING, ...).",
    ("state",), registry=metrics.REGISTRY,
)  # fmt: skip
REPLICA_STREAMS = Gauge(
    "echoforge_replica_active_streams", "Streams this ingress has running on each engine replica.",
    ("replica",), registry=metrics.REGISTRY,
)  # fmt: skip
REPLICA_REQUESTS = Counter(
    "echoforge_replica_requests", "Syntheses this ingress sent to each engine replica.",
    ("replica",), registry=metrics.REGISTRY,
)  # fmt: skip
REPLICA_DEATHS = Counter(
    "echoforge_replica_deaths", "Streams that lost their engine replica (before the first chunk: retried).",
    ("phase",), registry=metrics.REGISTRY,
)  # fmt: skip


class ReplicaDied(EngineError):
    """The engine replica serving a stream died; Ray Serve restarts it (503, tasks retry)."""


@dataclasses.dataclass
class _Served:
    """Per-request record (a context variable) the middleware turns into headers."""

    replicas: list[str] = dataclasses.field(default_factory=list)
    died: str | None = None


_served: contextvars.ContextVar[_Served | None] = contextvars.ContextVar("echoforge_served", default=None)


def _death_types() -> tuple[type[BaseException], ...]:
    from ray import exceptions as rex
    from ray.serve import exceptions as sex

    types: list[type[BaseException]] = [rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError]
    for name in ("ReplicaUnavailableError", "DeploymentUnavailableError"):
        if hasattr(sex, name):
            types.append(getattr(sex, name))
    return tuple(types)


class RemoteEngine:
    """The engine interface over the engine deployment's handle.

    Args:
        handle: a ``DeploymentHandle`` to :class:`~echoforge.deploy.replica.EngineReplica`.
        description: one replica's :meth:`~echoforge.deploy.replica.EngineReplica.describe`.
        capacity: streams the deployment runs at once (replicas × max ongoing requests each).
        app_name, deployment: where to read replica states (``/api/health``, ``/metrics``).
    """

    def __init__(
        self, handle: Any, description: dict[str, Any], *, capacity: int, app_name: str, deployment: str
    ) -> None:
        self._handle = handle
        self._generate = handle.options(method_name="generate", stream=True)
        self._deaths = _death_types()
        self.name = description["name"]
        self.sample_rate = int(description["sample_rate"])
        self.is_fallback = bool(description["is_fallback"])
        self.load_s = float(description.get("load_s") or 0.0)  # the replica's model load (for /api/health)
        self.max_concurrency = max(1, int(capacity))
        self.app_name, self.deployment = app_name, deployment
        base = EngineInfo(**description["info"])
        self._info = dataclasses.replace(
            base, description=f"{base.description} — served by Ray Serve replicas".strip(" —")
        )
        self._voices = [VoiceInfo(**v) for v in description["voices"]]
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._served_count: dict[str, int] = {}
        self._seen: dict[str, dict[str, Any]] = {description["replica"]: {"pid": description["pid"]}}
        self._snapshot: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="echoforge-replicas", daemon=True)
        self._poller.start()

    # ------------------------------------------------------------------ engine interface
    def info(self) -> EngineInfo:
        return self._info

    def voices(self) -> list[VoiceInfo]:
        return list(self._voices)

    def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        pieces = list(self.stream(request))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def encode_prompt(self, segment: Segment) -> Segment:
        """A voice prompt encoded by a replica (the voice store caches it in the shared data dir)."""
        return self._handle.encode_prompt.remote(segment).result()

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """Chunks from a replica, for callers in a worker thread (tasks, the agent, diagnostics)."""
        stop, wire = request.should_stop, dataclasses.replace(request, should_stop=None)
        for attempt in range(DEATH_RETRIES + 1):
            gen = self._call(wire)
            replica, started = None, False
            try:
                for item in gen:
                    if isinstance(item, dict):
                        replica = self._began(item["replica"], item.get("pid"))
                        continue
                    started = True
                    yield item
                    if stop is not None and stop():
                        return
                return
            except self._deaths as exc:
                self._died(replica, exc, started, attempt)
            finally:
                gen.cancel()
                self._ended(replica)
            time.sleep(0.2 * (attempt + 1))  # let Ray's router drop the dead replica

    async def astream(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """The same as :meth:`stream`, awaited on the event loop."""
        wire = dataclasses.replace(request, should_stop=None)
        for attempt in range(DEATH_RETRIES + 1):
            gen = self._call(wire)
            replica, started = None, False
            try:
                async for item in gen:
                    if isinstance(item, dict):
                        replica = self._began(item["replica"], item.get("pid"))
                        continue
                    started = True
                    yield item
                return
            except self._deaths as exc:
                self._died(replica, exc, started, attempt)
            finally:
                gen.cancel()
                self._ended(replica)
            await asyncio.sleep(0.2 * (attempt + 1))

    # ------------------------------------------------------------------ bookkeeping
    def _call(self, request: SynthesisRequest) -> Any:
        return self._generate.remote(request)

    def _began(self, replica: str, pid: int | None) -> str:
        with self._lock:
            self._active[replica] = self._active.get(replica, 0) + 1
            self._served_count[replica] = self._served_count.get(replica, 0) + 1
            self._seen.setdefault(replica, {})["pid"] = pid
            REPLICA_STREAMS.labels(replica=replica).set(self._active[replica])
        REPLICA_REQUESTS.labels(replica=replica).inc()
        served = _served.get()
        if served is not None:
            served.replicas.append(replica)
        return replica

    def _ended(self, replica: str | None) -> None:
        if replica is None:
            return
        with self._lock:
            self._active[replica] = max(0, self._active.get(replica, 0) - 1)
            REPLICA_STREAMS.labels(replica=replica).set(self._active[replica])

    def _died(self, replica: str | None, exc: BaseException, started: bool, attempt: int) -> None:
        """Retry (return) when nothing was streamed yet and retries are left; else raise :class:`ReplicaDied`."""
        who = f"engine replica {replica}" if replica else "an engine replica"
        if not started and attempt < DEATH_RETRIES:
            REPLICA_DEATHS.labels(phase="before_first_chunk").inc()
            log.warning("%s died before the first chunk (%s); retrying on another replica", who, type(exc).__name__)
            return
        REPLICA_DEATHS.labels(phase="mid_stream" if started else "retries_exhausted").inc()
        served = _served.get()
        if served is not None:
            served.died = replica or "unknown"
        message = f"{who} died {'mid-stream' if started else 'before it could start'}; Ray Serve is restarting it — retry the request"
        log.error("%s (%s: %s)", message, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        raise ReplicaDied(message) from None

    # ------------------------------------------------------------------ replicas (health, metrics)
    def replicas(self) -> dict[str, Any] | None:
        """The deployment's replicas (Ray Serve controller state + what this ingress sent them)."""
        snap = self._snapshot
        with self._lock:
            active, served = dict(self._active), dict(self._served_count)
        if snap is None:
            ids = sorted(self._seen)
            snap = {
                "running": None,
                "target": None,
                "states": {},
                "replicas": [{"id": i, "state": "UNKNOWN"} for i in ids],
            }
        rows = [
            {**r, "active_streams": active.get(r["id"], 0), "served": served.get(r["id"], 0)} for r in snap["replicas"]
        ]
        return {"backend": "ray", "app": self.app_name, "deployment": self.deployment, **snap, "replicas": rows}

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self._snapshot = self._read_controller()
                REPLICAS.clear()
                for state, n in self._snapshot["states"].items():
                    REPLICAS.labels(state=state).set(n)
            self._stop.wait(SNAPSHOT_EVERY_S)

    def _read_controller(self) -> dict[str, Any]:
        from ray.serve.context import _get_global_client

        details = _get_global_client().get_serve_details()
        dep = details["applications"][self.app_name]["deployments"][self.deployment]
        rows = [
            {
                "id": r.get("replica_id"),
                "state": str(getattr(r.get("state"), "value", r.get("state"))),
                "pid": r.get("pid"),
                "node_ip": r.get("node_ip"),
                "actor_name": r.get("actor_name"),
                "started_at": r.get("start_time_s"),
            }
            for r in dep.get("replicas", [])
        ]
        states: dict[str, int] = {}
        for r in rows:
            states[str(r["state"])] = states.get(str(r["state"]), 0) + 1
        return {
            "running": states.get("RUNNING", 0),
            "target": dep.get("target_num_replicas"),
            "states": states,
            "replicas": rows,
        }

    def close(self) -> None:
        self._stop.set()


class RemoteSynthesisService(SynthesisService):
    """:class:`SynthesisService` whose engine is a :class:`RemoteEngine` (same interface)."""

    def __init__(self, engine: RemoteEngine, voices: VoiceStore, settings: Settings) -> None:
        super().__init__(engine, voices, settings)  # type: ignore[arg-type]
        # The cluster's slots: replicas × max ongoing requests each, whatever the engine type.
        self.concurrency = engine.max_concurrency
        self._slots.capacity = engine.max_concurrency

    def warm_up(self) -> float:
        """Replicas warm themselves up before they serve; nothing to do here."""
        return 0.0

    async def stream(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """Chunks from a replica as they are generated, awaited on the loop (no producer thread)."""
        ticket = self._admit()  # may raise 503 server_overloaded
        stop = threading.Event()
        t0 = time.perf_counter()
        samples, first = 0, None
        with self._stats_lock:
            self.stats.streams += 1
        try:
            if not ticket.granted.is_set() and not await asyncio.to_thread(self._slots.wait, ticket, stop.is_set):
                return
            t0 = time.perf_counter()
            async with contextlib.aclosing(self.engine.astream(request)) as chunks:  # type: ignore[attr-defined]
                async for chunk in chunks:
                    chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                    if first is None:
                        first = time.perf_counter() - t0
                    samples += chunk.size
                    yield chunk
        finally:
            stop.set()
            self._slots.release(ticket)
            self._account(samples / self.engine.sample_rate, time.perf_counter() - t0, first)

    def close(self) -> None:
        super().close()
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


class ReplicaHeaderMiddleware:
    """``X-EchoForge-Replica`` / ``X-EchoForge-Ingress`` on every response; abort a stream whose replica died."""

    def __init__(self, app: ASGIApp, ingress_id: str) -> None:
        self.app = app
        self.ingress_id = ingress_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        served = _Served()
        token = _served.set(served)
        sse = False
        streaming = False  # the response started before its replica died (an error response did not)

        async def send_with_replica(message: Message) -> None:
            nonlocal sse, streaming
            if message["type"] == "http.response.start":
                streaming = served.died is None
                replica = served.replicas[-1] if served.replicas else self.ingress_id
                headers = list(message.get("headers") or [])
                sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
                headers += [
                    (b"x-echoforge-replica", replica.encode()),
                    (b"x-echoforge-ingress", self.ingress_id.encode()),
                ]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and served.died is not None and streaming:
                # The router ended the body cleanly after the error; a client must not take the
                # truncated audio for the whole: say so (SSE) and break the connection instead.
                if sse:
                    event = {
                        "type": "error",
                        "error": {
                            "code": "replica_died",
                            "message": f"engine replica {served.died} died mid-stream; retry",
                        },
                    }
                    await send(
                        {
                            "type": "http.response.body",
                            "body": f"data: {json.dumps(event)}\n\n".encode(),
                            "more_body": True,
                        }
                    )
                raise ReplicaDied(f"engine replica {served.died} died mid-stream")
            await send(message)

        try:
            await self.app(scope, receive, send_with_replica)
        finally:
            _served.reset(token)
