"""The live voice agent: mic PCM → VAD → STT → RAG + LLM → sentences → TTS → paced audio out.

::

    InputAudioRawFrame ─► VADProcessor ─► STTProcessor ─► LLMProcessor ─► SentenceProcessor ─► TTSProcessor ─► OutputProcessor ─► observer
                         ▲  (BotStarted/StoppedSpeaking travel upstream from the output: the VAD raises its bar)

Barge-in: the VAD confirms speech while the agent talks → ``UserStartedSpeakingFrame`` +
``InterruptionFrame`` downstream. Every stage drops its queue and cancels its work (the LLM and
TTS threads see their stop events); the output stops after the chunk in hand, works out how much of
the reply was actually heard, and commits only that to the history.

Audio leaves at real-time pace (``playback_lead_ms`` ahead of the clock), so "sent" ≈ "heard" and
the truncation is accurate to a chunk. Transports (WebSocket, sounddevice, file) read
:meth:`VoiceAgent.events` and play :class:`OutputAudioRawFrame`; on :class:`InterruptionFrame` they flush
whatever they buffered.

This module is the assembly: :class:`VoiceAgent` (builds the chain, owns the conversation, its
state and the per-turn latency it observes), :func:`voice_prompts` and :func:`vad_params`. Each
stage lives in its own module — ``stage_vad`` (:class:`VADProcessor`), ``stage_stt``
(:class:`STTProcessor`), ``stage_llm`` (:class:`LLMProcessor`, :class:`Grounding`),
``stage_sentences`` (:class:`SentenceProcessor`), ``stage_tts`` (:class:`TTSProcessor`),
``stage_output`` (:class:`OutputProcessor`) — and the latency record in ``latency``
(:class:`TurnLatency`). They are re-exported here, so ``from echoforge.agent.pipeline import
LLMProcessor`` keeps working; code inside the package imports them from their own modules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from echoforge.agent.config import AgentSettings
from echoforge.agent.conversation import Conversation, Turn
from echoforge.agent.frames import (
    AssistantTurnFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMTextFrame,
    LogFrame,
    MetricsFrame,
    RetrievalFrame,
    StateFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from echoforge.agent.latency import TurnLatency
from echoforge.agent.processors import Clock, Direction, Pipeline
from echoforge.agent.stage_llm import Grounding, LLMProcessor
from echoforge.agent.stage_output import OutputProcessor
from echoforge.agent.stage_sentences import SentenceProcessor
from echoforge.agent.stage_stt import STTProcessor
from echoforge.agent.stage_tts import TTSProcessor
from echoforge.agent.stage_vad import VADProcessor
from echoforge.agent.vad import SAMPLE_RATE, TurnDetector, VADParams
from echoforge.engines.base import Segment, SynthesisRequest, TTSEngine

__all__ = [
    "LISTENING",
    "PAUSED",
    "SPEAKING",
    "STOPPED",
    "THINKING",
    "Conversation",
    "Grounding",
    "LLMProcessor",
    "OutputProcessor",
    "Pipeline",
    "STTProcessor",
    "SentenceProcessor",
    "TTSProcessor",
    "Turn",
    "TurnLatency",
    "VADProcessor",
    "VoiceAgent",
    "vad_params",
    "voice_prompts",
]

log = logging.getLogger("echoforge.agent")

try:  # the server's Prometheus metrics; the agent works without them
    from echoforge import metrics as _metrics
except ImportError:  # pragma: no cover - prometheus-client is a core dependency
    _metrics = None

LISTENING, THINKING, SPEAKING, PAUSED, STOPPED = "listening", "thinking", "speaking", "paused", "stopped"


def voice_prompts(store: Any, engine: TTSEngine, speaker: int = 0) -> Callable[[str | None], Segment | None]:
    """``voice id -> voice prompt`` from a :class:`~echoforge.server.services.voices.VoiceStore`.

    The prompt is the saved voice's reference clip as the agent's ``speaker``, marked pinned;
    ``None`` for no voice, a name the store does not know (e.g. an espeak voice) or a fallback
    engine. Resolved once per voice id.
    """
    cache: dict[str, Segment | None] = {}

    def resolve(voice: str | None) -> Segment | None:
        if not voice:
            return None
        if voice not in cache:
            try:
                cache[voice] = store.prompt(store.get(voice), engine, speaker=speaker)
            except Exception as exc:  # unknown name or no reference audio: speak without a prompt
                log.debug("no voice prompt for %r: %s", voice, exc)
                cache[voice] = None
        return cache[voice]

    return resolve


class VoiceAgent:
    """One conversation: builds the pipeline around shared models and exposes its events.

    Args:
        engine: the TTS engine (CSM, Piper, espeak…).
        settings: validated agent settings.
        stt: a :class:`echoforge.agent.stt.WhisperSTT` (or anything with ``transcribe``).
        llm: a :class:`echoforge.agent.llm.ChatLLM`.
        kb: a :class:`echoforge.agent.rag.KnowledgeBase`, or ``None`` for no retrieval.
        emotion_detector: ``(audio, sr) -> {"label", "confidence", ...}`` or ``None``.
        vad: a ready :class:`TurnDetector` (tests share one model); default: built from settings.
        voice_prompt: ``voice id -> Segment | None``, the voice prompt (reference clip) of a saved
            voice for context-aware engines; see :func:`voice_prompts`. Default: none.
        clock: paces the audio output (default: the monotonic clock; tests pass a fake one).
    """

    def __init__(
        self,
        engine: TTSEngine,
        settings: AgentSettings,
        stt: Any,
        llm: Any,
        kb: Any = None,
        emotion_detector: Callable[[np.ndarray, int], dict | None] | None = None,
        vad: TurnDetector | None = None,
        voice_prompt: Callable[[str | None], Segment | None] | None = None,
        clock: Clock | None = None,
        synthesize: Callable[[SynthesisRequest], AsyncIterator[np.ndarray]] | None = None,
        aligner: Callable[[np.ndarray, int, str], list[tuple[str, float, float]]] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.conversation = Conversation(agent_speaker=settings.speaker)
        self.style: dict[str, float] = {}
        self.voice: str | None = settings.voice
        detector = vad or TurnDetector(vad_params(settings))
        detector.reset()
        self.vad = VADProcessor(detector)
        self.stt = STTProcessor(stt)
        self.llm = LLMProcessor(llm, self.conversation, settings, kb, emotion_detector, lambda: self.style)
        self.sentences = SentenceProcessor(settings.reply_max_sentences)
        # In the server: the synthesis service's stream (admission, metrics), as for any request.
        self.tts = TTSProcessor(engine, self.conversation, settings, lambda: self.voice, voice_prompt, synthesize)
        # Barge-in keeps the words heard: the engine's word timings, else (with an aligner) the cut
        # sentence aligned to its audio, else the share of its audio played.
        self.output = OutputProcessor(self.conversation, settings, detector, clock, aligner)
        self.pipeline = Pipeline([self.vad, self.stt, self.llm, self.sentences, self.tts, self.output], self._observe)
        self._events: asyncio.Queue[Frame] = asyncio.Queue()
        self.state = STOPPED
        self.latencies: list[dict[str, float | None]] = []
        self._turn: TurnLatency | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        await self.pipeline.start()
        self._started = True
        await self._set_state(LISTENING)

    async def stop(self) -> None:
        if not self._started:
            return
        await self.interrupt("stop")
        await self.pipeline.stop()
        self._started = False
        await self._set_state(STOPPED)

    async def pause(self) -> None:
        """Stop talking and stop listening until :meth:`resume`."""
        self.vad.paused = True
        await self.interrupt("pause")
        self.vad.detector.reset()
        await self._set_state(PAUSED)

    async def resume(self) -> None:
        self.vad.paused = False
        self.vad.detector.reset()
        await self._set_state(LISTENING)

    async def interrupt(self, reason: str = "manual") -> None:
        """Cut the current reply (what was heard stays in the history)."""
        await self.pipeline.queue_frame(InterruptionFrame(reason=reason))

    async def push_audio(self, audio: np.ndarray | bytes, sample_rate: int = SAMPLE_RATE) -> None:
        """Feed microphone audio: float32 samples, or PCM s16le bytes."""
        if isinstance(audio, bytes | bytearray | memoryview):
            from echoforge.audio import pcm16_to_float

            audio = pcm16_to_float(bytes(audio))
        await self.pipeline.queue_frame(InputAudioRawFrame(audio=np.asarray(audio, np.float32), sample_rate=sample_rate))

    def set_style(self, values: dict[str, float]) -> None:
        """Emotion sliders (0..1 each: warmth, energy, humor, formality)."""
        self.style = {k: min(1.0, max(0.0, float(v))) for k, v in values.items()}

    def set_voice(self, voice: str | None) -> None:
        self.voice = voice or None

    async def events(self) -> AsyncIterator[Frame]:
        """Every frame that leaves the pipeline (audio, transcripts, text, state, metrics, errors)."""
        while True:
            yield await self._events.get()

    def next_event_nowait(self) -> Frame | None:
        try:
            return self._events.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def next_event(self, timeout: float | None = None) -> Frame:
        return await asyncio.wait_for(self._events.get(), timeout)

    # -- observer ------------------------------------------------------------------------------
    async def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._events.put_nowait(StateFrame(state=state))

    async def _observe(self, frame: Frame, direction: Direction) -> None:
        paused = self.state == PAUSED
        if isinstance(frame, UserStoppedSpeakingFrame):
            self._turn = TurnLatency(vad_end=frame.created, speech_end=frame.created - frame.silence_s)
            if not paused:
                await self._set_state(THINKING)
        elif isinstance(frame, TranscriptionFrame) and self._turn is not None:
            self._turn.transcript = frame.created
            self._turn.text = frame.text
            if not frame.text.strip():
                self._events.put_nowait(LogFrame(message="(no words recognised)"))
                self._turn = None
                if not paused:
                    await self._set_state(LISTENING)
        elif isinstance(frame, RetrievalFrame) and self._turn is not None:
            self._turn.retrieval = frame.created
        elif isinstance(frame, LLMTextFrame) and self._turn is not None and self._turn.first_token is None:
            self._turn.first_token = frame.created
        elif isinstance(frame, BotStartedSpeakingFrame):
            if self._turn is not None and self._turn.first_audio is None:
                self._turn.first_audio = frame.created
                self._emit_latency()
            if not paused:
                await self._set_state(SPEAKING)
        elif isinstance(frame, AssistantTurnFrame):
            if self._turn is not None:  # a reply with no audio (empty, or cut before sound)
                self._emit_latency()
            if not paused and self.state in (THINKING, SPEAKING):
                await self._set_state(LISTENING)
        elif isinstance(frame, BotStoppedSpeakingFrame | InterruptionFrame):
            if not paused and self.state in (THINKING, SPEAKING) and not self.llm.generating:
                await self._set_state(LISTENING)
        elif isinstance(frame, UserStartedSpeakingFrame) and frame.during_bot_speech and _metrics is not None:
            _metrics.record_barge_in()
        elif isinstance(frame, ErrorFrame):
            log.error("agent error in %s: %s", frame.processor, frame.error)
        self._events.put_nowait(frame)

    def _emit_latency(self) -> None:
        assert self._turn is not None
        latency = self._turn.as_dict()
        self._turn = None
        self.latencies.append(latency)
        self._events.put_nowait(MetricsFrame(latency=latency))
        if _metrics is not None:  # Prometheus histograms (+ spans when tracing is on)
            _metrics.observe_agent_latency(latency)


def word_aligner(
    engine: TTSEngine, settings: AgentSettings | None = None
) -> Callable[[np.ndarray, int, str], list[tuple[str, float, float]]] | None:
    """The aligner for barge-in truncation: none when ``settings.barge_in_alignment`` is off or the
    engine reports its own word timings (espeak-ng), else the default one (DTW against an espeak-ng
    rendition)."""
    from echoforge.engines.timing import default_aligner, engine_reports_words

    if (settings is not None and not settings.barge_in_alignment) or engine_reports_words(engine):
        return None
    return default_aligner()


def vad_params(s: AgentSettings) -> VADParams:
    """The VAD part of the agent settings (``agent.turn``, pause events from ``stt_partial_ms``)."""
    return s.turn.vad_params(s.stt_partial_ms)
