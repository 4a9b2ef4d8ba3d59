"""The one small interface every TTS engine implements.

An engine turns a :class:`SynthesisRequest` into audio: either all at once
(:meth:`TTSEngine.synthesize`) or as an iterator of chunks (:meth:`TTSEngine.stream`).
Engines know nothing about HTTP, queues or files; the server, CLI and agent sit on top.

Audio everywhere inside EchoForge is a 1-D ``numpy.float32`` array in [-1, 1] at the
engine's ``sample_rate`` (24 kHz for CSM; the fallbacks declare their own rate and
:mod:`echoforge.audio` resamples at the edges).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Segment:
    """One turn of a conversation: who spoke, what they said, and (optionally) how it sounded.

    Args:
        speaker: integer speaker id (CSM renders text as ``[{speaker}]{text}``).
        text: the transcript of the turn.
        audio: the turn's audio, float (numpy array or torch tensor) at ``sample_rate``, or
            ``None`` for a text-only turn; CSM also takes Mimi codes (an integer tensor
            ``[frames, 32]``). Multi-channel audio (``[T, C]`` or ``[C, T]``, C ≤ 8) is
            downmixed to mono here, so every path that builds a Segment gets 1-D audio.
        sample_rate: rate of ``audio`` in Hz (24 kHz for CSM's Mimi codec).
        pinned: this segment is the voice prompt (a saved voice's reference clip). When the
            model's window is full, CSM drops the oldest *unpinned* turns first and keeps
            pinned ones; only a voice prompt that cannot fit even alone is trimmed.
    """

    speaker: int
    text: str
    audio: Any = None
    sample_rate: int = 24_000
    pinned: bool = False

    def __post_init__(self) -> None:
        a = self.audio
        if a is None or not _is_float_audio(a):
            return
        from echoforge.audio import is_multichannel, to_mono_float32

        if is_multichannel(a):
            object.__setattr__(self, "audio", to_mono_float32(a))

    def as_voice_prompt(self) -> Segment:
        """This segment marked as the voice prompt (``pinned=True``)."""
        return self if self.pinned else replace(self, pinned=True)


def _is_float_audio(a: Any) -> bool:
    """Float samples (numpy or torch), as opposed to integer Mimi codes or PCM."""
    if hasattr(a, "is_floating_point"):
        return bool(a.is_floating_point())
    dtype = getattr(a, "dtype", None)
    return dtype is not None and np.issubdtype(dtype, np.floating)


@dataclass(frozen=True)
class VoiceInfo:
    """A voice an engine can speak with."""

    id: str
    name: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    speaker: int = 0


@dataclass
class SynthesisRequest:
    """Everything an engine needs to speak one piece of text.

    ``temperature=0`` means greedy decoding (deterministic); ``seed`` fixes sampling.
    ``context`` carries earlier conversation turns (CSM uses them to keep the voice stable;
    the fallbacks ignore them).
    """

    text: str
    voice: str | None = None
    speaker: int = 0
    context: list[Segment] = field(default_factory=list)
    temperature: float = 0.9
    topk: int = 50
    max_audio_length_ms: int = 90_000
    speed: float = 1.0
    seed: int | None = None
    # Polled by engines that can stop mid-utterance (CSM drops the row at the next frame):
    # the server sets it when a client disconnects or a task is cancelled.
    should_stop: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    # Word-timing hook (echoforge.engines.timing): an engine that knows when its words are spoken
    # (``reports_word_timings = True``: espeak-ng) calls it with ``[(word, start_s, end_s)]`` —
    # words of the text it spoke, seconds from the start of this request's audio — before it
    # yields the audio that holds them. Other engines ignore it (their audio is aligned instead).
    on_words: Callable[[list[tuple[str, float, float]]], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("text must be a non-empty string")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.topk < 1:
            raise ValueError("topk must be >= 1")
        if self.max_audio_length_ms <= 0:
            raise ValueError("max_audio_length_ms must be > 0")
        if not 0.25 <= self.speed <= 4.0:
            raise ValueError("speed must be between 0.25 and 4.0")


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is, for logs, ``/api/health`` and ``echoforge engines``."""

    name: str
    is_fallback: bool
    sample_rate: int
    model: str = ""
    device: str = "cpu"
    description: str = ""
    # A model too small to be the real one (a tiny random test checkpoint): runs, speaks noise.
    smoke_test: bool = False


class EngineError(RuntimeError):
    """An engine could not be created or could not speak (clear message, no traceback needed)."""


class EngineUnavailable(EngineError):
    """The engine's model, binary or weights are not present on this machine."""


class EngineBusy(EngineError):
    """The engine is at capacity (every stream slot taken, its wait queue full): retry later.

    The server answers 503 with ``Retry-After: retry_after``.
    """

    def __init__(self, message: str, retry_after: float = 2.0):
        super().__init__(message)
        self.retry_after = retry_after


@runtime_checkable
class TTSEngine(Protocol):
    """The protocol. ``name``/``sample_rate``/``is_fallback`` are plain attributes."""

    name: str
    sample_rate: int
    is_fallback: bool

    def info(self) -> EngineInfo: ...

    def voices(self) -> list[VoiceInfo]: ...

    def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        """Return the whole utterance as 1-D float32 at ``sample_rate``."""
        ...

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """Yield 1-D float32 chunks at ``sample_rate`` as soon as they are ready."""
        ...


@runtime_checkable
class ScheduledEngine(TTSEngine, Protocol):
    """Optional parts of an engine with its own request scheduler and voice prompts (CSM).

    Callers (the synthesis service, ``VoiceStore``, the Ray replica) use these instead of
    reaching into the engine's internals; every part is looked up with ``getattr``, so an
    engine may offer any subset.
    """

    max_reference_s: float | None  # voice prompts are trimmed to this (part of the prompt cache key)

    def open_stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """Admit ``request`` now (the engine's one admission point) and return its chunk iterator.

        Raises :class:`EngineBusy` (with ``retry_after``) when the engine's queue is full.
        """
        ...

    def load(self) -> tuple[int, int]:
        """``(running, waiting)`` requests of the engine's scheduler."""
        ...

    def retry_after_s(self) -> float:
        """The engine's estimate of when a refused request should retry."""
        ...

    def encode_prompt(self, segment: Segment) -> Segment:
        """A voice's reference segment -> the form the engine reads (CSM: Mimi codes), cacheable."""
        ...


def engine_concurrency(engine: object) -> int:
    """How many requests ``engine`` can synthesize at once (its ``max_concurrency``, default 1).

    ``max_concurrency`` is an optional engine attribute (not part of :class:`TTSEngine`, so
    engines without it still satisfy the protocol): the number of concurrent ``stream()`` /
    ``synthesize()`` calls the engine runs correctly and usefully. Callers that run several
    requests at once (the server's synthesis service) bound themselves by it.
    """
    try:
        return max(1, int(getattr(engine, "max_concurrency", 1) or 1))
    except (TypeError, ValueError):
        return 1


class BaseEngine:
    """Convenience base: ``synthesize`` concatenates ``stream`` (engines may override either).

    ``max_concurrency`` says how many requests the engine can run at once from different
    threads (1: callers must serialize; the fallback engines set it from
    ``server.fallback_concurrency``).
    """

    name: str = "base"
    sample_rate: int = 24_000
    is_fallback: bool = True
    model: str = ""
    device: str = "cpu"
    description: str = ""
    smoke_test: bool = False  # see EngineInfo.smoke_test
    max_concurrency: int = 1
    # True when the engine calls ``request.on_words`` with its own word timings (espeak-ng);
    # otherwise word timings come from aligning its audio to the text (echoforge.engines.timing).
    reports_word_timings: bool = False

    def info(self) -> EngineInfo:
        return EngineInfo(
            name=self.name,
            is_fallback=self.is_fallback,
            sample_rate=self.sample_rate,
            model=self.model,
            device=self.device,
            description=self.description,
            smoke_test=self.smoke_test,
        )

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(id="default", name="Default")]

    def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        chunks = list(self.stream(request))
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:  # pragma: no cover
        raise NotImplementedError
