"""The synthesis service: the only place the server touches the engine.

* Engine calls run in worker threads — never on the event loop.
* Admission control has one point per engine. CSM (an engine with ``open_stream``): its
  scheduler's queue — every slot taken and ``csm.max_waiting`` waiting, a stream is refused at
  once with ``503 server_overloaded`` and the scheduler's one ``Retry-After`` estimate; there is no
  second gate here. Fallback engines (Piper/espeak): a FIFO slot gate of the engine's
  ``max_concurrency`` (``server.fallback_concurrency``) with a bounded wait queue
  (``server.fallback_max_waiting``), Retry-After from the queue and recent synthesis times.
  Queue workers (``/api/generate`` tasks) always wait: the task queue bounds them itself
  (``429 queue_full``).
* :meth:`SynthesisService.synthesize` is for queue workers (blocking, cancellable between
  chunks, reports progress). Batching is the engine's own business: CSM's scheduler batches every
  stream frame by frame (continuous batching); there is no request-level batching here.
* :meth:`SynthesisService.stream` is for HTTP/WebSocket streaming: an async iterator over
  the engine's chunks, produced in a thread and handed to the loop as they come.
* :meth:`SynthesisService.build_request` turns API parameters + a voice into a
  :class:`SynthesisRequest` (voice prompt for CSM, espeak variant for the fallbacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from echoforge import metrics
from echoforge.analysis.params import apply_tone, tone_from_instructions
from echoforge.engines.base import EngineBusy, Segment, SynthesisRequest, TTSEngine, engine_concurrency
from echoforge.server.errors import BadRequest, Unavailable
from echoforge.server.services.slots import Cancelled, GateFull, SlotGate
from echoforge.server.services.voices import VoiceStore
from echoforge.text import TextError, check_text, speech_seconds

if TYPE_CHECKING:
    from echoforge.config import Settings

log = logging.getLogger("echoforge.server.synthesis")



class _SchedulerLoad:
    """The CSM scheduler's queue seen through the gate's read-only counters (health, replica stats)."""

    def __init__(self, engine: Any, capacity: int) -> None:
        self._engine, self.capacity, self.max_waiting = engine, capacity, None

    @property
    def in_use(self) -> int:
        return int(self._engine.load()[0])

    @property
    def waiting(self) -> int:
        return int(self._engine.load()[1])


def estimate_seconds(text: str, speed: float = 1.0) -> float:
    """About how long ``text`` takes to say (progress only): echoforge.text's one speaking rate."""
    return speech_seconds(text, speed)


@dataclass
class SynthesisStats:
    requests: int = 0
    streams: int = 0
    rejected: int = 0
    audio_s: float = 0.0
    synth_s: float = 0.0


class SynthesisService:
    """Runs one engine for the server (and for ``echoforge worker``)."""

    def __init__(self, engine: TTSEngine, voices: VoiceStore, settings: Settings) -> None:
        self.engine = engine
        self.voices = voices
        self.settings = settings
        # Fallbacks: what the engine says it can run at once (Piper/espeak: server.fallback_concurrency).
        # CSM: its scheduler's slots (it batches every stream frame by frame, csm.max_batch_size) or
        # server.workers if larger, with csm.max_waiting waiting beyond them.
        self.admission = True
        # An engine with its own scheduler (CSM) admits streams itself, in one queue: no gate here.
        self.scheduled = not engine.is_fallback and callable(getattr(engine, "open_stream", None))
        if engine.is_fallback:
            self.concurrency = engine_concurrency(engine)
            self.max_waiting = settings.server.fallback_max_waiting
        else:
            self.concurrency = max(settings.server.workers, engine_concurrency(engine))
            self.max_waiting = settings.csm.max_waiting
        self._slots: SlotGate | _SchedulerLoad = (
            _SchedulerLoad(engine, self.concurrency) if self.scheduled else SlotGate(self.concurrency, self.max_waiting)
        )
        self.stats = SynthesisStats()
        self._stats_lock = threading.Lock()
        # Stream producers: the running ones plus some that wait for a slot (tickets are taken in
        # arrival order before submission, so the executor's FIFO never starves a granted one).
        # CSM: one producer per stream the scheduler admitted (running or waiting in its queue), so an
        # admitted stream never waits for a thread while its frames are being made.
        producers = self.concurrency + self.max_waiting if self.scheduled else self.concurrency * 2
        self._executor = ThreadPoolExecutor(max_workers=max(4, producers + 4), thread_name_prefix="echoforge-stream")

    # ------------------------------------------------------------------ requests
    def check_text(
        self,
        text: str,
        param: str,
        *,
        label: str | None = None,
        speed: float | None = None,
        max_audio_length_ms: int | None = None,
    ) -> str:
        """The one input rule of every endpoint (``echoforge.text.check_text``).

        Returns the cleaned text; raises :class:`BadRequest` naming ``param``. There is no
        separate audio limit to refuse on: every text within ``server.max_text_chars`` is spoken
        in full (split at sentences, piece after piece); the audio cap of a request follows
        from its text (``echoforge.text.audio_budget_ms``), or is the caller's own
        ``max_audio_length_ms``. ``speed`` is accepted for the callers' convenience.
        """
        try:
            return check_text(text, limit=self.settings.server.max_text_chars, name=label or param)
        except TextError as exc:
            raise BadRequest(str(exc), param=param) from None

    def build_request(
        self,
        *,
        text: str,
        voice: str,
        context: list[dict[str, Any]] | None = None,
        temperature: float | None = None,
        topk: int | None = None,
        speed: float | None = None,
        max_audio_length_ms: int | None = None,
        seed: int | None = None,
        instructions: str | None = None,
    ) -> SynthesisRequest:
        """API parameters (None = settings default) → engine request with the voice applied."""
        gen = self.settings.generation
        text = self.check_text(text, "text", speed=speed, max_audio_length_ms=max_audio_length_ms)
        v = self.voices.get(voice)
        segments: list[Segment] = []
        prompt = self.voices.prompt(v, self.engine)
        if prompt is not None:  # the voice prompt: pinned, so CSM keeps it when the window fills
            segments.append(prompt.as_voice_prompt())
        for turn in context or []:
            speaker = turn.get("speaker", 0)
            if turn.get("voice"):
                speaker = self.voices.get(turn["voice"]).speaker
            segments.append(Segment(speaker=int(speaker), text=str(turn["text"])))
        request = SynthesisRequest(
            text=text,
            voice=self.voices.engine_voice(v, self.engine),
            speaker=v.speaker,
            context=segments,
            temperature=gen.temperature,
            topk=gen.topk,
            speed=gen.speed if speed is None else speed,
            max_audio_length_ms=gen.max_audio_length_ms if max_audio_length_ms is None else max_audio_length_ms,
            seed=seed,
        )
        # Tone: "(calm) …" modifiers are parsed off the text (never spoken) and, like OpenAI
        # `instructions`, pick the emotion's temperature/top-k; values the caller set win.
        try:
            request = apply_tone(
                request, self.settings.analysis, emotion=tone_from_instructions(instructions or "").get("emotion")
            )
        except ValueError as exc:
            raise BadRequest(str(exc), param="text") from None
        overrides = {k: v for k, v in (("temperature", temperature), ("topk", topk)) if v is not None}
        return dataclasses.replace(request, **overrides) if overrides else request

    # ------------------------------------------------------------------ blocking (workers)
    @contextlib.contextmanager
    def slot(self, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold one of the ``concurrency`` engine slots (waiting in arrival order); CSM's scheduler queues itself."""
        if isinstance(self._slots, _SchedulerLoad):
            yield
            return
        with self._slots.hold(should_stop):
            yield

    def retry_after_s(self) -> float:
        """A client's fair wait before retrying: the queue ahead of it at the recent pace."""
        if self.scheduled:
            return float(self.engine.retry_after_s())  # type: ignore[attr-defined]
        with self._stats_lock:
            per_request = self.stats.synth_s / self.stats.requests if self.stats.requests else 1.0
        ahead = self._slots.waiting + self._slots.in_use
        return float(min(60.0, max(1.0, per_request * ahead / self.concurrency)))

    def _admit(self) -> Any:
        """A slot ticket for a stream; refuse with 503 + Retry-After when the wait queue is full."""
        try:
            return self._slots.reserve(admit=self.admission)
        except GateFull as exc:
            with self._stats_lock:
                self.stats.rejected += 1
            log.info("overloaded: %d busy, %d waiting — refusing a stream", self._slots.in_use, exc.waiting)
            raise Unavailable(
                f"the {self.engine.name} engine is busy ({self._slots.in_use} running, {exc.waiting} waiting); "
                "retry after the time in Retry-After",
                code="server_overloaded",
                retry_after=self.retry_after_s(),
            ) from None

    def synthesize(
        self,
        request: SynthesisRequest,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> np.ndarray:
        """Whole utterance, blocking. Raises :class:`Cancelled` when ``should_stop()`` turns true."""
        t0 = time.perf_counter()
        if should_stop and should_stop():
            raise Cancelled("cancelled before start")
        expected = estimate_seconds(request.text, request.speed) * self.engine.sample_rate
        pieces: list[np.ndarray] = []
        produced = 0
        with self.slot(should_stop):
            if should_stop is not None and request.should_stop is None:
                request = dataclasses.replace(request, should_stop=should_stop)
            for chunk in self._worker_chunks(request, should_stop):
                if should_stop and should_stop():
                    raise Cancelled("cancelled")
                chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                pieces.append(chunk)
                produced += chunk.size
                if on_progress:
                    on_progress(min(0.95, produced / expected))
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        self._account(audio.size / self.engine.sample_rate, time.perf_counter() - t0)
        return audio

    def _worker_chunks(self, request: SynthesisRequest, should_stop: Callable[[], bool] | None) -> Iterator[Any]:
        """The engine's chunks for a queue worker: with CSM's scheduler full, wait and retry (workers always wait)."""
        if not self.scheduled:
            return self.engine.stream(request)
        while True:
            try:
                return self.engine.open_stream(request)  # type: ignore[attr-defined]
            except EngineBusy as exc:
                deadline = time.monotonic() + max(0.1, min(exc.retry_after, 5.0))
                while time.monotonic() < deadline:
                    if should_stop and should_stop():
                        raise Cancelled("cancelled while waiting for the CSM scheduler") from None
                    time.sleep(0.05)

    def _account(self, audio_s: float, synth_s: float, ttfa_s: float | None = None) -> None:
        metrics.observe_synthesis(self.engine.name, audio_s, synth_s, ttfa_s)
        with self._stats_lock:
            self.stats.requests += 1
            self.stats.audio_s += audio_s
            self.stats.synth_s += synth_s

    # ------------------------------------------------------------------ async streaming
    async def stream(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """Yield chunks as the engine produces them; closing the iterator stops the engine."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=64)
        stop = threading.Event()

        def put(kind: str, item: Any) -> None:
            # Back-pressure: wait for room, but never forever (the consumer may be gone).
            try:
                fut = asyncio.run_coroutine_threadsafe(out.put((kind, item)), loop)
            except RuntimeError:  # loop already closed
                return
            while True:
                try:
                    fut.result(timeout=0.5)
                    return
                except FutureTimeout:
                    if stop.is_set():
                        fut.cancel()
                        return
                    if loop.is_closed():
                        return

        # Admission before anything starts: may raise 503 (Unavailable). CSM: the scheduler's queue.
        chunks: Iterator[Any] | None = None
        ticket: Any = None
        if self.scheduled:
            try:
                chunks = self.engine.open_stream(dataclasses.replace(request, should_stop=stop.is_set))  # type: ignore[attr-defined]
            except EngineBusy as exc:
                with self._stats_lock:
                    self.stats.rejected += 1
                active, waiting = self.engine.load()  # type: ignore[attr-defined]
                log.info("overloaded: %d busy, %d waiting — refusing a stream", active, waiting)
                raise Unavailable(
                    f"the {self.engine.name} engine is busy ({active} running, {waiting} waiting); "
                    "retry after the time in Retry-After",
                    code="server_overloaded",
                    retry_after=float(min(60.0, max(1.0, exc.retry_after))),
                ) from None
        else:
            ticket = self._admit()

        def release() -> None:
            if ticket is not None:
                self._slots.release(ticket)  # type: ignore[union-attr]
            elif chunks is not None:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()

        def produce() -> None:
            if ticket is not None and not self._slots.wait(ticket, stop.is_set):  # type: ignore[union-attr]
                put("end", None)
                return
            t0 = time.perf_counter()
            samples = 0
            first: float | None = None
            try:
                if stop.is_set():
                    return
                # The engine polls this too: a disconnect stops CSM at the next frame, not the next chunk.
                it = chunks if chunks is not None else self.engine.stream(dataclasses.replace(request, should_stop=stop.is_set))
                for chunk in it:
                    if stop.is_set():
                        return
                    chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                    if first is None:
                        first = time.perf_counter() - t0
                    samples += chunk.size
                    put("chunk", chunk)
            except BaseException as exc:
                put("error", exc)
            finally:
                release()
                self._account(samples / self.engine.sample_rate, time.perf_counter() - t0, first)
                put("end", None)

        with self._stats_lock:
            self.stats.streams += 1
        try:
            fut = loop.run_in_executor(self._executor, produce)
        except BaseException:  # executor shut down: give the slot back
            stop.set()
            release()
            raise
        try:
            while True:
                kind, item = await out.get()
                if kind == "chunk":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    break
        finally:
            stop.set()
            # Unblock the producer if it waits on a full queue, then let it finish in the background.
            while not out.empty():
                out.get_nowait()
            fut.add_done_callback(lambda f: f.exception())

    # ------------------------------------------------------------------ lifecycle
    def warm_up(self) -> float:
        """One short synthesis so the first user request does not pay for lazy init."""
        t0 = time.perf_counter()
        try:
            with self.slot():
                self.engine.synthesize(SynthesisRequest(text="Ready.", max_audio_length_ms=1000, temperature=0.0))
        except Exception as exc:  # warm-up problems are logged, requests will report them clearly
            log.warning("engine warm-up failed: %s", exc)
        return time.perf_counter() - t0

    def self_test(self, text: str = "EchoForge self test.") -> dict[str, Any]:
        """Time a short phrase (for /api/diagnostic)."""
        t0 = time.perf_counter()
        first: float | None = None
        samples = 0
        with self.slot():
            for chunk in self.engine.stream(
                SynthesisRequest(text=text, temperature=0.0, seed=0, max_audio_length_ms=10_000)
            ):
                if first is None:
                    first = time.perf_counter() - t0
                samples += np.asarray(chunk).size
        total = time.perf_counter() - t0
        audio_s = samples / self.engine.sample_rate
        return {
            "text": text,
            "ok": samples > 0,
            "first_chunk_s": round(first or total, 4),
            "synth_s": round(total, 4),
            "audio_s": round(audio_s, 4),
            "rtf": round(total / audio_s, 4) if audio_s else None,
        }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
