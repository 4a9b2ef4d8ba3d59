"""Test doubles for the agent: fake neighbours, fake models, a fake clock (pipecat's ``run_test``, our way).

Every fake here is driven by the test, never by how fast the machine is:

* :class:`FakeClock` — time moves only when the test calls :meth:`FakeClock.advance`
  (or, with ``auto=True``, exactly as much as each ``sleep`` asks: virtual time).
* :class:`FakeLLM` — streams a scripted reply; with ``gated=True`` each token waits for
  :meth:`FakeLLM.allow`, so "the LLM is still generating" is true by construction.
* :class:`FakeSTT`, :class:`FakeTTS`, :class:`FakeVAD`, :class:`HashEmbedder` — deterministic
  stand-ins for Whisper, the TTS engine, Silero and MiniLM.

:func:`run_pipeline` runs one processor between a fake upstream and a fake downstream neighbour
and returns what reached each side; :class:`Harness` does the same step by step.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from echoforge.agent.frames import ControlFrame, Frame
from echoforge.agent.processors import DOWN, UP, Clock, Direction, FrameProcessor
from echoforge.agent.stt import Transcript
from echoforge.engines.base import EngineInfo, SynthesisRequest

SAFETY_TIMEOUT_S = 30.0  # only against a hang: no test result depends on it


# --- time ------------------------------------------------------------------------------------------


class FakeClock(Clock):
    """A clock the test moves. ``sleep`` returns when the test has advanced time past its deadline.

    Args:
        start: the initial time (seconds).
        auto: virtual time — every ``sleep`` moves the clock by what it asks and returns at once.
    """

    def __init__(self, start: float = 1000.0, auto: bool = False) -> None:
        self.t = start
        self.auto = auto
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        if self.auto:
            self.t += seconds
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + seconds, future))
        try:
            await future
        finally:
            self._sleepers = [(d, f) for d, f in self._sleepers if f is not future]

    async def run_for(self, seconds: float, step: float = 0.01) -> None:
        """Let ``seconds`` pass in ``step``-long ticks, letting every woken task run after each tick.

        This is real time as a player sees it (audio keeps flowing); one :meth:`advance` by a big
        jump is a stall instead (the output then counts the gap as silence).
        """
        n = max(1, round(seconds / step))
        for _ in range(n):
            self.advance(seconds / n)
            for _ in range(3):
                await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` and wake every sleeper whose deadline has passed."""
        self.t += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self.t + 1e-9 and not future.done():
                future.set_result(None)


# --- fake neighbours -------------------------------------------------------------------------------


@dataclass
class _EndOfInput(ControlFrame):
    """Sent after the test's frames: when it comes out, everything before it was processed."""


class _Edge(FrameProcessor):
    """A fake neighbour that records, in order, every frame that reaches it."""

    def __init__(self, name: str, on_frame: Callable[[], None]) -> None:
        super().__init__(name)
        self.frames: list[Frame] = []
        self._on_frame = on_frame

    async def queue_frame(self, frame: Frame, direction: Direction = DOWN) -> None:
        self.frames.append(frame)
        self._on_frame()


class Harness:
    """``upstream neighbour → processor → downstream neighbour``, driven one frame at a time.

    ``down`` holds what the processor pushed downstream, ``up`` what it pushed upstream.
    """

    def __init__(self, processor: FrameProcessor) -> None:
        self.processor = processor
        self._changed = asyncio.Event()
        self.source = _Edge("fake-upstream", self._changed.set)
        self.sink = _Edge("fake-downstream", self._changed.set)
        processor._prev, processor._next = self.source, self.sink

    @property
    def down(self) -> list[Frame]:
        return [f for f in self.sink.frames if not isinstance(f, _EndOfInput)]

    @property
    def up(self) -> list[Frame]:
        return list(self.source.frames)

    async def __aenter__(self) -> Harness:
        await self.processor.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.processor.stop()

    async def send(self, frame: Frame, direction: Direction = DOWN) -> None:
        """Hand ``frame`` to the processor as its upstream (DOWN) or downstream (UP) neighbour would."""
        await self.processor.queue_frame(frame, direction)

    async def wait_for(self, predicate: Callable[[Frame], bool], direction: Direction = DOWN, count: int = 1) -> Frame:
        """Wait until ``count`` frames matching ``predicate`` went out in ``direction``; return the last."""

        def found() -> list[Frame]:
            return [f for f in (self.sink.frames if direction is DOWN else self.source.frames) if predicate(f)]

        async def wait() -> Frame:
            while len(found()) < count:
                self._changed.clear()
                await self._changed.wait()
            return found()[count - 1]

        return await asyncio.wait_for(wait(), SAFETY_TIMEOUT_S)

    async def drain(self) -> None:
        """Wait until every frame sent so far was processed (an end marker went all the way through)."""
        marker = _EndOfInput()
        await self.send(marker)
        await self.wait_for(lambda f: f is marker)


def _check(kind: str, got: Sequence[Frame], expected: Sequence[type] | None) -> None:
    if expected is None:
        return
    names = [type(f).__name__ for f in got]
    want = [t.__name__ for t in expected]
    ok = len(got) == len(expected) and all(isinstance(f, t) for f, t in zip(got, expected, strict=True))
    assert ok, f"{kind} frames: expected {want}, got {names}"


async def run_pipeline(
    processor: FrameProcessor,
    frames_in: Iterable[Frame | tuple[Frame, Direction]],
    expected_down: Sequence[type] | None = None,
    expected_up: Sequence[type] | None = None,
    *,
    until: Callable[[Frame], bool] | None = None,
) -> tuple[list[Frame], list[Frame]]:
    """Run ``processor`` between fake neighbours on ``frames_in``; check and return what came out.

    Args:
        processor: the stage under test (not started: this starts and stops it).
        frames_in: frames to send, downstream unless given as ``(frame, UP)``.
        expected_down: frame types expected downstream, in order (``None``: not checked).
        expected_up: frame types expected upstream, in order (``None``: not checked).
        until: also wait for a downstream frame matching this (work a stage does in its own
            task, e.g. the output's playback, after the inputs were processed).

    Returns:
        ``(down, up)``: every frame the processor pushed each way, in order.
    """
    async with Harness(processor) as h:
        for item in frames_in:
            frame, direction = item if isinstance(item, tuple) else (item, DOWN)
            await h.send(frame, direction)
        await h.drain()
        if until is not None:
            await h.wait_for(until)
        down, up = h.down, h.up
    _check("downstream", down, expected_down)
    _check("upstream", up, expected_up)
    return down, up


# --- fake models -------------------------------------------------------------------------------------


def tone(seconds: float, amplitude: float = 0.3, sample_rate: int = 16_000, freq: float = 220.0) -> np.ndarray:
    """A sine: "speech" for :class:`FakeVAD` (any amplitude over its ``level``)."""
    t = np.arange(int(seconds * sample_rate), dtype=np.float32) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float, sample_rate: int = 16_000) -> np.ndarray:
    return np.zeros(int(seconds * sample_rate), np.float32)


class FakeVAD:
    """Silero's interface (``prob = vad(window)``, ``reset()``): loud windows are speech."""

    def __init__(self, level: float = 0.02, speech: float = 0.95, quiet: float = 0.01) -> None:
        self.level, self.speech, self.quiet = level, speech, quiet

    def reset(self) -> None:
        pass

    def __call__(self, window: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        return self.speech if rms >= self.level else self.quiet


class FakeTurnModel:
    """The smart-turn model's interface (``p = model(audio)``): a fixed "turn complete" probability;
    records the length of the audio it was asked about."""

    def __init__(self, probability: float = 1.0) -> None:
        self.probability = probability
        self.calls: list[int] = []

    def __call__(self, audio: np.ndarray) -> float:
        self.calls.append(int(audio.size))
        return self.probability


class FakeSTT:
    """Whisper's interface: each call on audio with sound in it returns the next scripted line.

    Silent audio (the tail of a turn after a pause) gives no words. ``calls`` counts recognitions.
    """

    def __init__(self, lines: Sequence[str] | Callable[[np.ndarray, int], str], level: float = 0.02) -> None:
        self._lines = list(lines) if not callable(lines) else None
        self._fn = lines if callable(lines) else None
        self.level = level
        self.calls = 0

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16_000) -> Transcript:
        self.calls += 1
        seconds = audio.size / sample_rate
        if audio.size == 0 or float(np.abs(audio).max()) < self.level:
            return Transcript("", [], audio_seconds=seconds)
        if self._fn is not None:
            text = self._fn(audio, sample_rate)
        else:
            text = self._lines.pop(0) if self._lines else ""
        words = text.split()
        step = seconds / max(1, len(words))
        return Transcript(text, [(w, i * step, (i + 1) * step) for i, w in enumerate(words)], audio_seconds=seconds)


class Gate:
    """Lets items through one by one as the test allows them (or all, once opened)."""

    def __init__(self, gated: bool = True) -> None:
        self.gated = gated
        self._allowed = 0
        self._open = not gated
        self._cond = threading.Condition()

    def allow(self, n: int = 1) -> None:
        with self._cond:
            self._allowed += n
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def wait(self, stop: threading.Event | Callable[[], bool] | None = None) -> bool:
        """Block until the next item may pass (True) or ``stop`` is set (False)."""
        stopped = (stop.is_set if isinstance(stop, threading.Event) else stop) or (lambda: False)
        with self._cond:
            while not (self._open or self._allowed > 0):
                if stopped():
                    return False
                self._cond.wait(0.01)  # wakes on allow()/open(); the timeout only polls ``stop``
            if not self._open:
                self._allowed -= 1
        return not stopped()


def _pieces(text: str) -> list[str]:
    """Token-like pieces: each word with the space in front of it."""
    return re.findall(r"\s*\S+", text)


class FakeLLM:
    """The :class:`~echoforge.agent.llm.ChatLLM` interface with a scripted reply, one word per token.

    Args:
        reply: the reply text, or ``messages -> text``.
        gated: each token waits for :meth:`allow` (or :meth:`open`); the stop event ends the
            wait, as a barge-in does on a real model.
        embedded: what ``answer_style: auto`` sees (True: the embedded model, notes are quoted).
    """

    name = "fake-llm"

    def __init__(self, reply: str | Callable[[list[dict[str, str]]], str] = "Hello there.", *, gated: bool = False,
                 embedded: bool = False) -> None:  # fmt: skip
        self.reply = reply
        self.gated = gated
        self.embedded = embedded
        self.calls: list[list[dict[str, str]]] = []
        self.yielded = 0
        self.started = threading.Event()  # a stream began
        self.stopped = threading.Event()  # a stream was stopped (stop event, or closed) before its end
        self.finished = threading.Event()  # a stream reached the end of its reply
        self.gate = Gate(gated)

    def memory_bytes(self) -> int:
        return 0

    def allow(self, tokens: int = 1) -> None:
        """Let ``tokens`` more tokens out (gated mode)."""
        self.gate.allow(tokens)

    def open(self) -> None:
        """Let every remaining token out."""
        self.gate.open()

    def stream(self, messages: list[dict[str, str]], stop: threading.Event, max_tokens: int = 96,
               temperature: float = 0.3) -> Iterator[str]:  # fmt: skip
        self.calls.append(messages)
        self.started.set()
        text = self.reply(messages) if callable(self.reply) else self.reply
        try:
            for piece in _pieces(text)[:max_tokens]:
                if not self.gate.wait(stop):
                    self.stopped.set()
                    return
                self.yielded += 1
                yield piece
        except GeneratorExit:  # the consumer closed the stream (it saw the stop event first)
            self.stopped.set()
            raise
        self.finished.set()


class FakeTTS:
    """A TTS engine (``stream``/``synthesize``): a tone of ``seconds_per_word`` per word of the text.

    With ``gated=True`` each chunk waits for :meth:`allow` / :meth:`open`.
    """

    name = "fake-tts"
    is_fallback = True

    def __init__(self, sample_rate: int = 24_000, seconds_per_word: float = 0.25, chunk_s: float = 0.2,
                 amplitude: float = 0.2, gated: bool = False) -> None:  # fmt: skip
        self.sample_rate = sample_rate
        self.seconds_per_word = seconds_per_word
        self.chunk_s = chunk_s
        self.amplitude = amplitude
        self.requests: list[SynthesisRequest] = []
        self.gate = Gate(gated)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(self.name, True, self.sample_rate, description="test double")

    def allow(self, chunks: int = 1) -> None:
        self.gate.allow(chunks)

    def open(self) -> None:
        self.gate.open()

    def audio_for(self, text: str) -> np.ndarray:
        return tone(self.seconds_per_word * max(1, len(text.split())), self.amplitude, self.sample_rate)

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        self.requests.append(request)
        audio = self.audio_for(request.text)
        step = max(1, int(self.chunk_s * self.sample_rate))
        for i in range(0, audio.size, step):
            if not self.gate.wait(request.should_stop):
                return
            yield audio[i : i + step]

    def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        return np.concatenate(list(self.stream(request)) or [np.zeros(0, np.float32)])


class HashEmbedder:
    """MiniLM's interface (``encode``, ``model_name``): hashed bag of word stems, unit norm."""

    model_name = "hash-embedder"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        from echoforge.agent.rag_lexical import tokenize

        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for term in tokenize(text):
                out[row, int(hashlib.md5(term.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def fake_knowledge_base(folder: Any, index_dir: Any, docs: dict[str, str], threshold: float = 0.2) -> Any:
    """A real :class:`~echoforge.agent.rag.KnowledgeBase` over ``docs`` with :class:`HashEmbedder`."""
    from pathlib import Path

    from echoforge.agent.rag import KnowledgeBase

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text)
    kb = KnowledgeBase(folder, index_dir, HashEmbedder(), relevance_threshold=threshold)
    kb.build()
    return kb


__all__ = [
    "DOWN",
    "UP",
    "FakeClock",
    "FakeLLM",
    "FakeSTT",
    "FakeTTS",
    "FakeVAD",
    "Gate",
    "Harness",
    "HashEmbedder",
    "fake_knowledge_base",
    "run_pipeline",
    "silence",
    "tone",
]
