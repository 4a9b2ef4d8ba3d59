"""Frames: the only things that travel through the agent pipeline (pipecat-style, pipecat's names).

* :class:`SystemFrame` — handled at once, even ahead of queued data, and never dropped
  (audio input, speech start/stop, interruptions, state, errors, metrics).
* :class:`DataFrame` / :class:`ControlFrame` — ordered; dropped from every queue by an
  :class:`InterruptionFrame` (transcripts, LLM text, sentences, TTS audio, response markers).

Every frame records ``created`` (``time.monotonic()``), which the latency breakdown uses.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_ids = itertools.count(1)


@dataclass
class Frame:
    """Base frame: a unique id and its creation time (monotonic seconds)."""

    id: int = field(default_factory=lambda: next(_ids), init=False)
    created: float = field(default_factory=time.monotonic, init=False)

    @property
    def name(self) -> str:
        return f"{type(self).__name__}#{self.id}"


@dataclass
class SystemFrame(Frame):
    """Processed immediately; survives interruptions."""


@dataclass
class DataFrame(Frame):
    """Ordered payload; dropped on interruption."""


@dataclass
class ControlFrame(Frame):
    """Ordered control marker; dropped on interruption."""


# --- system frames -----------------------------------------------------------------------------


@dataclass
class InputAudioRawFrame(SystemFrame):
    """Microphone audio: 1-D float32 at ``sample_rate`` (16 kHz inside the pipeline)."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 16_000


@dataclass
class UserStartedSpeakingFrame(SystemFrame):
    """The VAD confirmed the start of user speech (``during_bot_speech``: it is a barge-in)."""

    during_bot_speech: bool = False


@dataclass
class UserStoppedSpeakingFrame(SystemFrame):
    """The VAD decided the user's turn ended (after ``silence_ms`` of silence, or at the first pause
    when the smart-turn model judged the turn finished).

    ``silence_s``: how long after the user's last word the decision came (``created`` less this is
    when the speech ended: latencies count from there, what the user actually waits).
    """

    speech_seconds: float = 0.0
    silence_s: float = 0.0


@dataclass
class InterruptionFrame(SystemFrame):
    """Stop everything in flight: playback, queued TTS, the LLM stream. ``reason`` is for logs."""

    reason: str = "user"


@dataclass
class BotStartedSpeakingFrame(SystemFrame):
    """The first audio chunk of a reply left the output (travels upstream)."""


@dataclass
class BotStoppedSpeakingFrame(SystemFrame):
    """The reply finished playing or was cut (travels upstream)."""

    interrupted: bool = False


@dataclass
class OutputAudioRawFrame(SystemFrame):
    """A paced chunk of agent audio for the player: 1-D float32 at ``sample_rate``."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 24_000


@dataclass
class StateFrame(SystemFrame):
    """The agent's state changed: ``listening`` / ``thinking`` / ``speaking`` / ``paused`` / ``stopped``."""

    state: str = "listening"


@dataclass
class RetrievalFrame(SystemFrame):
    """What the knowledge base returned for a turn (``fallback``: nothing relevant enough)."""

    query: str = ""
    passages: list[Any] = field(default_factory=list)
    fallback: bool = True
    emotion: dict[str, Any] | None = None


@dataclass
class AssistantTurnFrame(SystemFrame):
    """A reply entered the history: what was actually spoken, and whether it was cut."""

    text: str = ""
    full_text: str = ""
    interrupted: bool = False
    sources: list[str] = field(default_factory=list)


@dataclass
class MetricsFrame(SystemFrame):
    """Per-turn latency breakdown, seconds from the VAD end of turn (see :class:`TurnLatency`)."""

    latency: dict[str, float | None] = field(default_factory=dict)


@dataclass
class LLMStopFrame(SystemFrame):
    """Upstream: the reply has enough (length limit, or a piece that was not grounded): stop generating."""

    turn_id: int = 0
    reason: str = ""


@dataclass
class LogFrame(SystemFrame):
    """A human-readable log line for UIs."""

    message: str = ""
    level: str = "info"


@dataclass
class ErrorFrame(SystemFrame):
    """An error, pushed upstream by the processor that failed (``fatal``: the agent must stop)."""

    error: str = ""
    fatal: bool = False
    processor: str = ""


# --- data / control frames -----------------------------------------------------------------------


@dataclass
class UserAudioFrame(DataFrame):
    """The whole user turn (16 kHz float32), for the recogniser."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 16_000
    vad_end: float = 0.0


@dataclass
class UserPauseAudioFrame(DataFrame):
    """The user paused inside a turn: the turn's audio so far (16 kHz), for an early transcription."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 16_000


@dataclass
class InterimTranscriptionFrame(DataFrame):
    """The turn's words so far, recognised at a pause (the turn may still go on)."""

    text: str = ""


@dataclass
class TranscriptionFrame(DataFrame):
    """The recognised user turn, with word timings ``[(word, start_s, end_s), ...]``."""

    text: str = ""
    words: list[tuple[str, float, float]] = field(default_factory=list)
    audio: np.ndarray | None = None
    sample_rate: int = 16_000
    vad_end: float = 0.0


@dataclass
class LLMFullResponseStartFrame(ControlFrame):
    """A reply begins (``turn_id`` ties the reply's frames together).

    ``question`` is what the user asked; ``known`` the text the model was given (question,
    history, notes): a spoken piece may only use numbers and names from it (``strict``: names
    too, for answers from notes). When ``known`` is set, only whole sentences are checked and
    spoken, so a rejected sentence is never spliced after its first words.
    ``grounded_answer`` replaces a piece that breaks that rule (a sentence quoted from the notes).
    ``verbatim``: the reply's text is already decided (a sentence quoted from the notes, an honest
    decline, the persona's small-talk line): it is spoken as it comes, its first words early, and
    not checked.
    """

    turn_id: int = 0
    question: str = ""
    known: str = ""
    strict: bool = False
    grounded_answer: str = ""
    verbatim: bool = False
    sources: list[str] = field(default_factory=list)


@dataclass
class LLMTextFrame(DataFrame):
    """A streamed piece of the reply's text."""

    text: str = ""
    turn_id: int = 0


@dataclass
class LLMFullResponseEndFrame(ControlFrame):
    """The reply's text is complete (``cut``: the token budget ended it, maybe mid-sentence)."""

    turn_id: int = 0
    text: str = ""
    cut: bool = False


@dataclass
class TTSTextFrame(DataFrame):
    """One sentence for the TTS engine."""

    text: str = ""
    turn_id: int = 0
    index: int = 0


@dataclass
class TTSAudioRawFrame(DataFrame):
    """Engine audio for one sentence (or part of it): float32 at ``sample_rate``."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 24_000
    text: str = ""
    turn_id: int = 0
    index: int = 0
    last: bool = False
    # On the ``last`` frame, when the engine reports its own word timings (espeak-ng):
    # ``[{word, start_s, end_s, interpolated}]`` of ``text``, from the start of the sentence's audio.
    words: list[dict[str, Any]] | None = None


def frame_event(frame: Frame) -> dict[str, Any] | None:
    """The JSON event a UI gets for a frame (``None``: not shown; audio goes out as binary)."""
    t = round(time.time(), 3)
    if isinstance(frame, StateFrame):
        return {"type": "state", "state": frame.state, "t": t}
    if isinstance(frame, UserStartedSpeakingFrame):
        return {"type": "user_started", "barge_in": frame.during_bot_speech, "t": t}
    if isinstance(frame, UserStoppedSpeakingFrame):
        return {"type": "user_stopped", "speech_seconds": round(frame.speech_seconds, 3), "t": t}
    if isinstance(frame, TranscriptionFrame):
        words = [{"word": w, "start": round(s, 3), "end": round(e, 3)} for w, s, e in frame.words]
        return {"type": "transcript", "text": frame.text, "words": words, "t": t}
    if isinstance(frame, RetrievalFrame):
        passages = [
            {"source": p.source, "score": round(float(p.score), 3), "text": p.text[:300]} for p in frame.passages
        ]
        return {"type": "retrieval", "fallback": frame.fallback, "passages": passages, "emotion": frame.emotion, "t": t}
    if isinstance(frame, LLMFullResponseStartFrame):
        return {"type": "llm_start", "turn": frame.turn_id, "sources": frame.sources, "t": t}
    if isinstance(frame, LLMTextFrame):
        return {"type": "llm_text", "text": frame.text, "turn": frame.turn_id}
    if isinstance(frame, LLMFullResponseEndFrame):
        return {"type": "llm_end", "turn": frame.turn_id, "text": frame.text, "t": t}
    if isinstance(frame, AssistantTurnFrame):
        return {"type": "assistant", "text": frame.text, "full_text": frame.full_text, "interrupted": frame.interrupted,
                "sources": frame.sources, "t": t}  # fmt: skip
    if isinstance(frame, InterruptionFrame):
        return {"type": "interrupt", "reason": frame.reason, "t": t}
    if isinstance(frame, BotStartedSpeakingFrame):
        return {"type": "bot_started", "t": t}
    if isinstance(frame, BotStoppedSpeakingFrame):
        return {"type": "bot_stopped", "interrupted": frame.interrupted, "t": t}
    if isinstance(frame, MetricsFrame):
        return {"type": "latency", **frame.latency, "t": t}
    if isinstance(frame, LogFrame):
        return {"type": "log", "level": frame.level, "message": frame.message, "t": t}
    if isinstance(frame, ErrorFrame):
        return {"type": "error", "message": frame.error, "processor": frame.processor, "fatal": frame.fatal, "t": t}
    return None


# Names before the frames followed pipecat's (kept so older imports keep working).
InputAudioFrame = InputAudioRawFrame
OutputAudioFrame = OutputAudioRawFrame
LLMResponseStartFrame = LLMFullResponseStartFrame
LLMResponseEndFrame = LLMFullResponseEndFrame
TTSAudioFrame = TTSAudioRawFrame
