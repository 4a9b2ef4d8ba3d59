"""Prometheus metrics for the whole package, in one module.

Every metric lives in one dedicated :class:`~prometheus_client.CollectorRegistry`
(:data:`REGISTRY`), never the global default one, so several apps or test cases in one
process do not collide. Other parts call the small helpers below; they never touch the
metric objects directly, and label values are normalised to fixed sets so a bad caller
cannot blow up label cardinality.

- HTTP: ``echoforge_http_requests_total``, ``…_http_request_duration_seconds``,
  ``…_http_requests_in_progress`` (by route template), observed by the server's
  :class:`~echoforge.server.middleware.MetricsMiddleware`.
- :func:`set_queue_depth`, :func:`set_tasks_running`, :func:`observe_task`: queue depth, running
  tasks, task outcomes, queue wait and run time.
- :func:`observe_synthesis` / :func:`synthesis_timer`: engine real-time factor, time to first
  audio, frames/s, audio seconds; :func:`set_model_load_time`, :func:`set_engine_info`.
- :func:`observe_agent_stage`, :func:`record_barge_in`: agent per-stage latency and barge-ins.
- :func:`record_prompt_cache`: voice prompt cache hits and misses.
- collected at scrape time: process RSS and, once CUDA is in use, per-GPU memory.

:func:`render` returns the Prometheus text exposition; ``GET /metrics``
(:mod:`echoforge.server.routers.metrics`) serves it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from echoforge import tracing
from echoforge.csm.rates import FRAME_RATE
from echoforge.logging import request_id

log = logging.getLogger("echoforge.access")

#: The one registry every EchoForge metric is registered in.
REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# CSM's Mimi codec emits one frame per 80 ms of audio (12.5 Hz); engines that have no frames
# (the Piper / espeak fallbacks) report audio-equivalent frames so the panel stays comparable.
MIMI_FRAME_RATE_HZ = FRAME_RATE

# Fixed label sets: anything else is folded into "other" (never a new time series).
TASK_OUTCOMES = ("done", "failed", "cancelled", "retried", "rejected", "requeued")
AGENT_STAGES = ("transcript", "retrieval", "first_token", "first_audio", "voice_to_voice")
# Keys of the agent's per-turn latency dict (``echoforge.agent.pipeline.TurnLatency.as_dict``) → stage.
_AGENT_LATENCY_KEYS = {
    "stt_s": "transcript",
    "rag_s": "retrieval",
    "llm_first_token_s": "first_token",
    "tts_first_audio_s": "first_audio",
    "voice_to_voice_s": "voice_to_voice",
}
_MAX_ENGINE_LABELS = 16

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_TTFA_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# --- HTTP ------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "echoforge_http_requests", "HTTP requests by method, route template and status code.",
    ("method", "route", "status"), registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "echoforge_http_request_duration_seconds", "Time from request start to the last body byte sent.",
    ("method", "route"), buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
HTTP_IN_PROGRESS = Gauge(
    "echoforge_http_requests_in_progress", "HTTP requests being served now.", ("method",), registry=REGISTRY,
)

# --- task queue ------------------------------------------------------------------------------
QUEUE_DEPTH = Gauge("echoforge_queue_depth", "Tasks waiting in the queue (not yet running).", registry=REGISTRY)
TASKS_RUNNING = Gauge("echoforge_tasks_running", "Tasks an engine worker is running now.", registry=REGISTRY)
TASKS = Counter("echoforge_tasks", "Finished task attempts by outcome.", ("outcome",), registry=REGISTRY)
QUEUE_WAIT = Histogram(
    "echoforge_queue_wait_seconds", "Time a task waited in the queue before a worker took it.",
    buckets=_WAIT_BUCKETS, registry=REGISTRY,
)
TASK_RUN = Histogram(
    "echoforge_task_run_seconds", "Time a worker spent running a task.", buckets=_WAIT_BUCKETS, registry=REGISTRY,
)

# --- engine ----------------------------------------------------------------------------------
ENGINE_RTF = Histogram(
    "echoforge_engine_real_time_factor", "Wall time / audio duration per synthesis (below 1 = faster than real time).",
    ("engine",), buckets=_RTF_BUCKETS, registry=REGISTRY,
)
ENGINE_LAST_RTF = Gauge(
    "echoforge_engine_last_real_time_factor", "Real-time factor of the latest synthesis (or of the running one so far).",
    ("engine",), registry=REGISTRY,
)
ENGINE_TTFA = Histogram(
    "echoforge_engine_time_to_first_audio_seconds", "Time from request to the first audio chunk.",
    ("engine",), buckets=_TTFA_BUCKETS, registry=REGISTRY,
)
ENGINE_FPS = Gauge(
    "echoforge_engine_frames_per_second", "Mimi frames (80 ms of audio each) generated per second, latest synthesis.",
    ("engine",), registry=REGISTRY,
)
ENGINE_FRAMES = Counter("echoforge_engine_frames", "Mimi frames generated (audio-equivalent for fallbacks).", ("engine",), registry=REGISTRY)
ENGINE_AUDIO = Counter("echoforge_engine_audio_seconds", "Seconds of audio generated.", ("engine",), registry=REGISTRY)
ENGINE_WALL = Counter("echoforge_engine_synthesis_seconds", "Wall-clock seconds spent synthesising.", ("engine",), registry=REGISTRY)
ENGINE_ACTIVE = Gauge("echoforge_engine_active_syntheses", "Syntheses running now.", ("engine",), registry=REGISTRY)
MODEL_LOAD = Gauge(
    "echoforge_model_load_seconds", "Time to load (phase=load) and warm up (phase=warmup) the engine's model.",
    ("engine", "phase"), registry=REGISTRY,
)
ENGINE_INFO = Gauge(
    "echoforge_engine_info", "The engine in use (value 1); fallback=\"true\" when it is not CSM.",
    ("engine", "model", "device", "fallback"), registry=REGISTRY,
)

# --- agent -----------------------------------------------------------------------------------
AGENT_STAGE = Histogram(
    "echoforge_agent_stage_seconds",
    "Agent per-turn latency by stage: transcript (VAD end→transcript), retrieval (→passages found), "
    "first_token (→first LLM token), first_audio (first LLM token→first audio), voice_to_voice (end of the user's speech→first audio).",
    ("stage",), buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
AGENT_BARGE_INS = Counter("echoforge_agent_barge_ins", "Times the user interrupted the agent while it spoke.", registry=REGISTRY)
AGENT_TURNS = Counter("echoforge_agent_turns", "User turns the agent answered.", registry=REGISTRY)

# --- voices ----------------------------------------------------------------------------------
PROMPT_CACHE = Counter(
    "echoforge_voice_prompt_cache", "Voice prompt (Mimi codes of the reference clip) cache lookups by result.",
    ("result",), registry=REGISTRY,
)
for _r in ("hit", "miss"):
    PROMPT_CACHE.labels(result=_r)  # both series exist from the start, so a hit rate is computable at once


# --- helpers other parts call ----------------------------------------------------------------
_engines_seen: set[str] = set()


_KNOWN_ENGINES = frozenset({"csm", "piper", "espeak", "fake"})


def _engine_label(engine: str) -> str:
    name = str(engine or "unknown")[:40]
    if name not in _engines_seen and name not in _KNOWN_ENGINES:
        if len(_engines_seen) >= _MAX_ENGINE_LABELS:
            return "other"
        _engines_seen.add(name)
    return name


def set_queue_depth(n: int) -> None:
    """Set the number of tasks waiting in the queue (call on enqueue/dequeue, or periodically)."""
    QUEUE_DEPTH.set(max(0, int(n)))


def set_tasks_running(n: int) -> None:
    """Set the number of tasks running in engine workers now."""
    TASKS_RUNNING.set(max(0, int(n)))


def observe_task(outcome: str, wait_s: float | None = None, run_s: float | None = None) -> None:
    """Record one finished task attempt.

    Args:
        outcome: one of :data:`TASK_OUTCOMES` (``done``, ``failed``, ``cancelled``, ``retried``,
            ``rejected``, ``requeued``); anything else is counted as ``other``.
        wait_s: seconds the task waited in the queue before a worker took it.
        run_s: seconds the worker spent on it.
    """
    label = outcome if outcome in TASK_OUTCOMES else "other"
    TASKS.labels(outcome=label).inc()
    if wait_s is not None and wait_s >= 0:
        QUEUE_WAIT.observe(wait_s)
    if run_s is not None and run_s >= 0:
        TASK_RUN.observe(run_s)
    if tracing.enabled():
        end = time.time_ns()
        run_start = end - int((run_s or 0.0) * 1e9)
        tracing.record_span("queue.wait", wait_s, end_ns=run_start, request_id=request_id.get())
        tracing.record_span("task.run", run_s, end_ns=end, outcome=label, request_id=request_id.get())


def observe_queue_wait(wait_s: float) -> None:
    """Record how long a task waited before a worker took it (when known before it finishes)."""
    if wait_s >= 0:
        QUEUE_WAIT.observe(wait_s)


def observe_synthesis(
    engine: str,
    audio_seconds: float,
    wall_seconds: float,
    ttfa_seconds: float | None = None,
    frames: int | None = None,
) -> None:
    """Record one finished synthesis.

    Args:
        engine: engine name (``csm``, ``piper``, ``espeak``, …).
        audio_seconds: duration of the audio produced.
        wall_seconds: wall-clock time it took.
        ttfa_seconds: time to the first audio chunk, when streamed.
        frames: Mimi frames generated; default: ``audio_seconds × FRAME_RATE`` (audio-equivalent).
    """
    label = _engine_label(engine)
    if frames is None:
        frames = int(round(audio_seconds * MIMI_FRAME_RATE_HZ))
    ENGINE_AUDIO.labels(engine=label).inc(max(0.0, audio_seconds))
    ENGINE_WALL.labels(engine=label).inc(max(0.0, wall_seconds))
    ENGINE_FRAMES.labels(engine=label).inc(max(0, frames))
    if audio_seconds > 0 and wall_seconds >= 0:
        rtf = wall_seconds / audio_seconds
        ENGINE_RTF.labels(engine=label).observe(rtf)
        ENGINE_LAST_RTF.labels(engine=label).set(rtf)
    if wall_seconds > 0:
        ENGINE_FPS.labels(engine=label).set(frames / wall_seconds)
    if ttfa_seconds is not None and ttfa_seconds >= 0:
        ENGINE_TTFA.labels(engine=label).observe(ttfa_seconds)
    if tracing.enabled():
        tracing.record_span(
            "engine.synthesize", wall_seconds, engine=label, audio_seconds=round(audio_seconds, 4), frames=frames,
            rtf=round(wall_seconds / audio_seconds, 4) if audio_seconds > 0 else None, ttfa_seconds=ttfa_seconds,
        )


class SynthesisTimer:
    """Live view of one streamed synthesis; made by :func:`synthesis_timer`.

    Call :meth:`chunk` for every audio chunk: the first one records time to first audio, and
    every one updates the engine's last real-time factor and frames/s gauges, so a scrape
    during a long request already sees them move.
    """

    def __init__(self, engine: str, sample_rate: int):
        self.engine = _engine_label(engine)
        self.sample_rate = sample_rate
        self.t0 = time.perf_counter()
        self.ttfa: float | None = None
        self.samples = 0
        self.frames: int | None = None

    def chunk(self, n_samples: int, frames: int | None = None) -> None:
        """Account for one chunk of ``n_samples`` samples (and ``frames`` Mimi frames, if known)."""
        now = time.perf_counter() - self.t0
        if self.ttfa is None:
            self.ttfa = now
        self.samples += int(n_samples)
        if frames is not None:
            self.frames = (self.frames or 0) + int(frames)
        audio_s = self.samples / self.sample_rate
        if audio_s > 0 and now > 0:
            ENGINE_LAST_RTF.labels(engine=self.engine).set(now / audio_s)
            done = self.frames if self.frames is not None else audio_s * MIMI_FRAME_RATE_HZ
            ENGINE_FPS.labels(engine=self.engine).set(done / now)

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate


@contextmanager
def synthesis_timer(engine: str, sample_rate: int) -> Iterator[SynthesisTimer]:
    """Time one synthesis; on exit, record it with :func:`observe_synthesis` (if it made audio).

    Example::

        with metrics.synthesis_timer(engine.name, engine.sample_rate) as t:
            for chunk in engine.stream(request):
                t.chunk(len(chunk))
                yield chunk
    """
    timer = SynthesisTimer(engine, sample_rate)
    ENGINE_ACTIVE.labels(engine=timer.engine).inc()
    try:
        yield timer
    finally:
        ENGINE_ACTIVE.labels(engine=timer.engine).dec()
        if timer.samples:
            observe_synthesis(timer.engine, timer.audio_seconds, time.perf_counter() - timer.t0, timer.ttfa, timer.frames)


def set_model_load_time(engine: str, seconds: float, phase: str = "load") -> None:
    """Record how long loading (``phase="load"``) or warming up (``phase="warmup"``) the model took."""
    MODEL_LOAD.labels(engine=_engine_label(engine), phase="warmup" if phase == "warmup" else "load").set(seconds)


def set_engine_info(engine: str, model: str | None, device: str, fallback: bool) -> None:
    """Publish which engine serves requests (one series with value 1; earlier ones are removed)."""
    ENGINE_INFO.clear()
    ENGINE_INFO.labels(engine=_engine_label(engine), model=str(model or "-")[:120], device=str(device), fallback=str(bool(fallback)).lower()).set(1)


def observe_agent_stage(stage: str, seconds: float) -> None:
    """Record one agent turn's latency for ``stage`` (one of :data:`AGENT_STAGES`)."""
    if seconds >= 0:
        AGENT_STAGE.labels(stage=stage if stage in AGENT_STAGES else "other").observe(seconds)


def observe_agent_latency(latency: dict[str, float | None]) -> None:
    """Record one agent turn from its latency dict (``stt_s``, ``rag_s``, ``llm_first_token_s``,
    ``tts_first_audio_s``, ``voice_to_voice_s``; ``None`` values are skipped) and count the turn."""
    for key, stage in _AGENT_LATENCY_KEYS.items():
        value = latency.get(key)
        if value is not None:
            observe_agent_stage(stage, float(value))
    AGENT_TURNS.inc()
    if tracing.enabled():
        # The turn ends now (first audio); lay the stages back to back from the VAD's end of turn.
        stages = [(stage, latency.get(key)) for key, stage in _AGENT_LATENCY_KEYS.items() if stage != "voice_to_voice"]
        total = latency.get("voice_to_voice_s") or sum(v for _, v in stages if v)
        cursor = time.time_ns() - int(total * 1e9)
        if latency.get("voice_to_voice_s") is not None:
            tracing.record_span("agent.voice_to_voice", total, end_ns=cursor + int(total * 1e9))
        for stage, value in stages:
            if value is None:
                continue
            cursor += int(value * 1e9)
            tracing.record_span(f"agent.{stage}", value, end_ns=cursor)


def record_agent_turn() -> None:
    """Count one user turn the agent answered."""
    AGENT_TURNS.inc()


def record_barge_in() -> None:
    """Count one barge-in (the user interrupted the agent while it spoke)."""
    AGENT_BARGE_INS.inc()


def record_prompt_cache(hit: bool) -> None:
    """Count one voice-prompt cache lookup (hit: the Mimi codes were already computed)."""
    PROMPT_CACHE.labels(result="hit" if hit else "miss").inc()


# --- memory, collected at scrape time ---------------------------------------------------------
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
    except Exception:
        return None


class MemoryCollector:
    """Process RSS and, when this process already uses CUDA, per-GPU memory — read at scrape time.

    torch is never imported here, and CUDA is never initialised by a scrape: GPU figures
    appear only once the engine itself has put something on the GPU.
    """

    def describe(self) -> list:
        return []

    def collect(self):
        rss = _rss_bytes()
        if rss is not None:
            g = GaugeMetricFamily("echoforge_process_resident_memory_bytes", "Resident memory (RSS) of this process.")
            g.add_metric([], float(rss))
            yield g
        torch = sys.modules.get("torch")
        try:
            if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
                return
            alloc = GaugeMetricFamily("echoforge_gpu_memory_allocated_bytes", "GPU memory held by tensors.", labels=["device"])
            reserved = GaugeMetricFamily("echoforge_gpu_memory_reserved_bytes", "GPU memory reserved by PyTorch's allocator.", labels=["device"])
            peak = GaugeMetricFamily("echoforge_gpu_memory_peak_allocated_bytes", "Peak GPU memory held by tensors.", labels=["device"])
            total = GaugeMetricFamily("echoforge_gpu_memory_total_bytes", "Total memory of the GPU.", labels=["device"])
            for i in range(torch.cuda.device_count()):
                dev = f"cuda:{i}"
                alloc.add_metric([dev], float(torch.cuda.memory_allocated(i)))
                reserved.add_metric([dev], float(torch.cuda.memory_reserved(i)))
                peak.add_metric([dev], float(torch.cuda.max_memory_allocated(i)))
                total.add_metric([dev], float(torch.cuda.get_device_properties(i).total_memory))
            yield from (alloc, reserved, peak, total)
        except Exception as exc:  # a scrape must never fail because of the GPU
            log.debug("GPU memory metrics unavailable: %s", exc)


REGISTRY.register(MemoryCollector())

# Every process that records metrics (server, `echoforge worker`, agent) also gets traces when the
# user asked for them with OTEL_TRACES_EXPORTER; without that variable this does nothing.
tracing.setup_tracing()


def render() -> bytes:
    """The Prometheus text exposition of :data:`REGISTRY`."""
    return generate_latest(REGISTRY)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on its own port — for processes without the HTTP app (``echoforge worker``)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=addr, registry=REGISTRY)


__all__ = [
    "AGENT_STAGES",
    "CONTENT_TYPE",
    "REGISTRY",
    "TASK_OUTCOMES",
    "SynthesisTimer",
    "observe_agent_latency",
    "observe_agent_stage",
    "observe_queue_wait",
    "observe_synthesis",
    "observe_task",
    "record_agent_turn",
    "record_barge_in",
    "record_prompt_cache",
    "render",
    "serve_metrics",
    "set_engine_info",
    "set_model_load_time",
    "set_queue_depth",
    "set_tasks_running",
    "synthesis_timer",
]
