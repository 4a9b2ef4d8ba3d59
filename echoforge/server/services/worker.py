"""Queue workers: claim a task, synthesize it in this thread, store the encoded result.

Used by the server (an in-process :class:`WorkerPool`) and by ``echoforge worker`` (the same
pool in its own process, for the Redis backend). Failures are classified: bad input
(``ValueError``, API errors) fails the task at once; anything else (engine hiccups, CUDA
out-of-memory, I/O) is retried up to ``server.task_retries`` times. On shutdown, running
tasks get a grace period to finish, then are put back in the queue.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from echoforge import metrics
from echoforge.analysis.memory import ProfileStore
from echoforge.audio import encode
from echoforge.conversation import Turn, render_conversation
from echoforge.engines.base import SynthesisRequest
from echoforge.logging import bind_request_id
from echoforge.server.errors import ApiError
from echoforge.server.services.queue import TaskQueue, TaskRecord
from echoforge.server.services.slots import Cancelled
from echoforge.server.services.synthesis import SynthesisService

if TYPE_CHECKING:
    from echoforge.config import Settings

DRIFT_THRESHOLD = 0.75  # speaker-embedding cosine below which a turn counts as drifted
log = logging.getLogger("echoforge.server.worker")

MAINTENANCE_EVERY_S = 60.0
HEARTBEAT_EVERY_S = 2.0


class _ServiceEngine:
    """Lets :func:`render_conversation` use the engine through the service's slots/batching."""

    def __init__(self, service: SynthesisService, should_stop) -> None:
        self._service = service
        self._should_stop = should_stop
        self.name = service.engine.name
        self.sample_rate = service.engine.sample_rate
        self.is_fallback = service.engine.is_fallback

    def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        return self._service.synthesize(request, should_stop=self._should_stop)


class TaskRunner:
    """Runs one task to completion (or failure / cancellation / re-queue)."""

    def __init__(self, queue: TaskQueue, synthesis: SynthesisService, settings: Settings) -> None:
        self.profiles = ProfileStore(settings.data_dir)
        self.queue = queue
        self.synthesis = synthesis
        self.settings = settings

    def run(self, task: TaskRecord, stopping: threading.Event) -> str:
        """Run ``task``; returns its new status (and reports it to the metrics)."""
        t0 = time.perf_counter()
        status = self._run(task, stopping)
        outcome = {"queued": "requeued" if stopping.is_set() else "retried"}.get(status, status)
        wait_s = (task.started_at - task.created_at) if task.started_at else None
        metrics.observe_task(outcome, wait_s, time.perf_counter() - t0)
        return status

    def _run(self, task: TaskRecord, stopping: threading.Event) -> str:
        bind_request_id(task.id)
        last_progress = [0.0]

        def should_stop() -> bool:
            return stopping.is_set() or self.queue.is_cancelled(task.id)

        def on_progress(value: float) -> None:
            now = time.monotonic()
            if now - last_progress[0] > 0.2:
                last_progress[0] = now
                self.queue.progress(task.id, value)

        t0 = time.perf_counter()
        try:
            words = None
            if task.kind == "generate":
                audio, words = self._generate(task.request, should_stop, on_progress)
            elif task.kind == "conversation":
                audio = self._conversation(task.request, should_stop, on_progress)
            else:
                raise ValueError(f"unknown task kind {task.kind!r}")
            synth_s = time.perf_counter() - t0
            sr = self.synthesis.engine.sample_rate
            data = encode(audio, sr, task.format)
            audio_s = audio.size / sr
            timings = {
                "queue_s": round((task.started_at or time.time()) - task.created_at, 4),
                "synth_s": round(synth_s, 4),
                "audio_s": round(audio_s, 4),
                "rtf": round(synth_s / audio_s, 4) if audio_s else None,
            }
            if words is not None:
                timings["words"] = words
            self.queue.complete(task.id, data, timings)
            log.info("task done in %.2f s (%.2f s audio)", synth_s, audio_s)
            return "done"
        except Cancelled:
            if self.queue.is_cancelled(task.id):
                self.queue.acknowledge_cancel(task.id)
                log.info("task cancelled")
                return "cancelled"
            self.queue.requeue(task.id)
            log.info("task put back in the queue (shutting down)")
            return "queued"
        except (ApiError, ValueError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            self.queue.fail(task.id, message, retry=False, max_retries=0)
            log.warning("task failed (bad input): %s", message)
            return "failed"
        except Exception as exc:
            status = self.queue.fail(
                task.id, f"{type(exc).__name__}: {exc}", retry=True, max_retries=self.settings.server.task_retries
            )
            log.warning("task attempt %d failed (%s); now %s", task.attempts, exc, status, exc_info=status == "failed")
            return status

    def _generate(self, req: dict[str, Any], should_stop, on_progress) -> tuple[np.ndarray, list[dict] | None]:
        request = self.synthesis.build_request(
            text=req["text"],
            voice=req.get("voice") or "alloy",
            context=req.get("context") or [],
            temperature=req.get("temperature"),
            topk=req.get("topk"),
            speed=req.get("speed"),
            max_audio_length_ms=req.get("max_audio_length_ms"),
            seed=req.get("seed"),
            instructions=req.get("instructions"),
        )
        words = None
        if req.get("timestamps"):
            from echoforge.server.services.captions import synthesize_timed

            audio, words = synthesize_timed(self.synthesis, request, should_stop=should_stop, on_progress=on_progress)
        else:
            audio = self.synthesis.synthesize(request, should_stop=should_stop, on_progress=on_progress)
        self._remember(req.get("voice") or "alloy", audio, request.text)
        return audio, words

    def _remember(self, voice: str, audio: np.ndarray, text: str) -> None:
        """Fold the generated turn into the voice's long-term profile (drift is logged)."""
        try:
            voice_id = self.synthesis.voices.get(voice).id
            profile, similarity = self.profiles.observe(voice_id, audio, self.synthesis.engine.sample_rate, text)
        except Exception as exc:  # the profile is a by-product: never fail a finished task for it
            log.warning("voice profile update failed: %s", exc)
            return
        if profile.turns > 1 and similarity < DRIFT_THRESHOLD:
            log.warning("voice drift: %s sounds unlike its profile (similarity %.2f)", voice_id, similarity)

    def _conversation(self, req: dict[str, Any], should_stop, on_progress) -> np.ndarray:
        voices = self.synthesis.voices
        engine = self.synthesis.engine
        gen = self.settings.generation
        speakers: dict[str, int] = {}
        prompts = {}
        turns = []
        for turn in req["turns"]:
            voice = voices.get(turn["voice"])
            if voice.id not in speakers:
                speakers[voice.id] = len(speakers)
                prompt = voices.prompt(voice, engine, speaker=speakers[voice.id])
                if prompt is not None:
                    prompts[speakers[voice.id]] = prompt
            turns.append(Turn(speaker=speakers[voice.id], text=turn["text"], voice=voices.engine_voice(voice, engine)))
        try:
            return render_conversation(
                _ServiceEngine(self.synthesis, should_stop),
                turns,
                prompts,
                temperature=gen.temperature if req.get("temperature") is None else req["temperature"],
                topk=gen.topk if req.get("topk") is None else req["topk"],
                seed=req.get("seed"),
                on_turn=lambda done, total: on_progress(done / total),
                should_stop=should_stop,
            )
        except InterruptedError as exc:
            raise Cancelled(str(exc)) from None


class WorkerPool:
    """``n`` threads that claim and run tasks, plus one maintenance thread."""

    def __init__(self, queue: TaskQueue, runner: TaskRunner, threads: int, *, name: str | None = None) -> None:
        self.queue = queue
        self.runner = runner
        self.n = threads
        self.worker_id = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._draining = threading.Event()  # stop claiming new tasks
        self._stopping = threading.Event()  # interrupt running tasks (they get re-queued)
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        settings = runner.settings.server
        self._max_age_s = settings.result_ttl_hours * 3600
        self._max_bytes = int(settings.result_max_mb * 1024 * 1024)

    @property
    def busy(self) -> int:
        return self._busy

    def start(self) -> None:
        for i in range(self.n):
            t = threading.Thread(
                target=self._loop, args=(f"{self.worker_id}/{i}",), name=f"echoforge-worker-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._maintenance, name="echoforge-maintenance", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("worker pool %s started: %d thread(s), %s queue", self.worker_id, self.n, self.queue.backend)

    def _loop(self, worker: str) -> None:
        while not self._draining.is_set():
            try:
                task = self.queue.claim(worker, timeout=0.5)
            except Exception as exc:  # e.g. Redis restarting: wait, then try again
                log.warning("claiming a task failed: %s", exc)
                self._draining.wait(1.0)
                continue
            if task is None:
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                self.runner.run(task, self._stopping)
            except Exception:  # the runner reports failures itself; never let a worker die
                log.exception("worker %s crashed on task %s", worker, task.id)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def _maintenance(self) -> None:
        last_cleanup = 0.0
        while not self._draining.is_set():
            try:
                self.queue.heartbeat(self.worker_id)
                if time.monotonic() - last_cleanup > MAINTENANCE_EVERY_S:
                    last_cleanup = time.monotonic()
                    removed = self.queue.cleanup(self._max_age_s, self._max_bytes)
                    if removed:
                        log.info("removed %d old result(s)", removed)
            except Exception as exc:
                log.warning("queue maintenance failed: %s", exc)
            self._draining.wait(HEARTBEAT_EVERY_S)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; let running tasks finish for ``grace_s``; then re-queue the rest."""
        self._draining.set()
        deadline = time.monotonic() + grace_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            log.warning("shutting down: re-queueing tasks that did not finish within %.0f s", grace_s)
            self._stopping.set()
            for t in self._threads:
                t.join(5.0)
        log.info("worker pool %s stopped", self.worker_id)
