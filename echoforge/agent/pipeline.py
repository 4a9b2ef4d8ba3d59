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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
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
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMStopFrame,
    LLMTextFrame,
    LogFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    RetrievalFrame,
    StateFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserAudioFrame,
    UserPauseAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from echoforge.agent.grounding import (
    DONT_KNOW,
    answer_type,
    answers,
    asks_for_fact,
    choose_answer,
    decline,
    ranked_sentences,
    small_talk_reply,
    strip_labels,
    support,
    ungrounded,
)
from echoforge.agent.llm import build_messages
from echoforge.agent.processors import DOWN, UP, Clock, Direction, FrameProcessor, Pipeline, iterate_in_thread
from echoforge.agent.sentences import SentenceSplitter
from echoforge.agent.vad import SAMPLE_RATE, TurnDetector, VADEvent, VADParams
from echoforge.engines.base import Segment, SynthesisRequest, TTSEngine

log = logging.getLogger("echoforge.agent")

try:  # the server's Prometheus metrics; the agent works without them
    from echoforge import metrics as _metrics
except ImportError:  # pragma: no cover - prometheus-client is a core dependency
    _metrics = None

LISTENING, THINKING, SPEAKING, PAUSED, STOPPED = "listening", "thinking", "speaking", "paused", "stopped"


# --- processors -----------------------------------------------------------------------------------


class VADProcessor(FrameProcessor):
    """Runs the synchronous :class:`TurnDetector` on input audio (~0.1 ms per 32 ms window, so inline;
    with the smart-turn model on, in a worker thread: one model call is ~50-150 ms of CPU)."""

    def __init__(self, detector: TurnDetector) -> None:
        super().__init__()
        self.detector = detector
        self.paused = False
        # A tap for protocol adapters (the Realtime API): each VAD event, with its position in the
        # input, before its frames go out.
        self.on_event: Callable[[VADEvent], None] | None = None

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, InputAudioRawFrame):
            if self.paused:
                return
            audio = frame.audio
            if frame.sample_rate != SAMPLE_RATE:
                from echoforge.audio import resample

                audio = resample(audio, frame.sample_rate, SAMPLE_RATE)
            if self.detector.turn_model is not None:
                events = await asyncio.to_thread(self.detector.push, audio)
            else:
                events = self.detector.push(audio)
            for event in events:
                if self.on_event is not None:
                    self.on_event(event)
                if event.kind == "started":
                    await self.push_frame(UserStartedSpeakingFrame(during_bot_speech=event.during_bot_speech))
                    await self.push_frame(InterruptionFrame(reason="barge-in" if event.during_bot_speech else "user"))
                elif event.kind == "pause":
                    assert event.audio is not None
                    await self.push_frame(UserPauseAudioFrame(audio=event.audio))
                else:
                    assert event.audio is not None
                    silence_s = event.time_s - event.speech_end_s if event.speech_end_s is not None else 0.0
                    await self.push_frame(
                        UserStoppedSpeakingFrame(speech_seconds=event.audio.size / SAMPLE_RATE, silence_s=silence_s)
                    )
                    await self.push_frame(UserAudioFrame(audio=event.audio, vad_end=time.monotonic()))
            return
        if isinstance(frame, BotStartedSpeakingFrame):
            self.detector.set_bot_speaking(True)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.detector.set_bot_speaking(False)
        await self.push_frame(frame, direction)


class STTProcessor(FrameProcessor):
    """Transcribes each user turn in a worker thread, starting at the user's pauses.

    At a pause (:class:`UserPauseAudioFrame`) the audio since the last transcribed point is
    recognised and kept; at the end of the turn only the tail after it is left — nothing at all
    when the user said nothing after the pause (the usual case: the pause *was* the end of the
    turn, and the VAD's remaining silence hides the recogniser's time).
    """

    def __init__(self, stt: Any) -> None:
        super().__init__()
        self.stt = stt
        self._reset()

    def _reset(self) -> None:
        self._done = 0  # samples of this turn already transcribed
        self._texts: list[str] = []
        self._words: list[tuple[str, float, float]] = []

    async def _transcribe_until(self, audio: np.ndarray, end: int, sample_rate: int) -> None:
        piece = audio[self._done : end]
        if piece.size < sample_rate // 10:  # < 100 ms: silence the VAD kept, nothing to recognise
            return
        offset = self._done / sample_rate
        transcript = await asyncio.to_thread(self.stt.transcribe, piece, sample_rate)
        if transcript.text:
            self._texts.append(transcript.text)
        self._words += [(w, s + offset, e + offset) for w, s, e in transcript.words]
        self._done = end

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, UserStartedSpeakingFrame):
            self._reset()
        elif isinstance(frame, UserPauseAudioFrame):
            await self._transcribe_until(frame.audio, frame.audio.size, frame.sample_rate)
            if self._texts:
                await self.push_frame(InterimTranscriptionFrame(text=" ".join(self._texts).strip()))
            return
        elif isinstance(frame, UserAudioFrame):
            if frame.audio.size > self._done:
                await self._transcribe_until(frame.audio, frame.audio.size, frame.sample_rate)
            text, words = " ".join(self._texts).strip(), self._words
            self._reset()
            await self.push_frame(
                TranscriptionFrame(text=text, words=words, audio=frame.audio, sample_rate=frame.sample_rate, vad_end=frame.vad_end)
            )
            return
        await self.push_frame(frame, direction)


@dataclass
class Grounding:
    """What the notes say about one utterance, and what the agent may answer from them.

    ``query`` is the utterance resolved against the recent turns (retrieval used it); ``answer``
    the notes' sentence that answers the question (its type included); ``decline`` the honest
    "my notes don't say" when the notes are on topic but hold no such answer.
    """

    text: str
    query: str
    passages: list[Any]
    relevant: bool
    answer: str = ""
    decline: str = ""


def _persona_names(persona: str) -> tuple[str, str]:
    """The persona's name and what it knows about, for small-talk replies ("You are Echo, … of EchoForge")."""
    import re

    name = re.search(r"\bYou are (\w+)", persona)
    topic = re.search(r"\bassistant of ([\w-]+)", persona)
    return (name.group(1) if name else "your assistant"), (topic.group(1) if topic else "the notes I was given")


class LLMProcessor(FrameProcessor):
    """Retrieval + emotion + prompt + streamed LLM reply for each non-empty transcript."""

    def __init__(
        self,
        llm: Any,
        conversation: Conversation,
        settings: AgentSettings,
        kb: Any = None,
        emotion_detector: Callable[[np.ndarray, int], dict | None] | None = None,
        style: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        super().__init__()
        self.llm = llm
        self.conversation = conversation
        self.settings = settings
        self.kb = kb
        self.emotion_detector = emotion_detector
        self.style = style or dict
        self.turn_id = 0
        self.cancelled = 0  # replies cut short by an interruption
        self.generating = False
        self._stop: threading.Event | None = None
        self._speculation: Grounding | None = None  # the decision for the words at the last pause

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, TranscriptionFrame):
            await self.push_frame(frame, direction)
            if frame.text.strip():
                await self._respond(frame)
            return
        if isinstance(frame, InterimTranscriptionFrame):
            await self._prepare(frame.text)
            return
        if isinstance(frame, LLMStopFrame) and frame.turn_id == self.turn_id and self._stop is not None:
            self._stop.set()  # the reply has what it needs: stop generating (the text frames already out stay)
        await self.push_frame(frame, direction)

    async def _retrieve(self, text: str) -> Grounding:
        """Retrieval and the answer decision for ``text`` (with the recent turns when it refers back).

        Reused when the words are those of a pause's speculation.
        """
        if self._speculation is not None and self._speculation.text == text:
            return self._speculation
        s = self.settings
        query = self.conversation.contextual_query(text)
        passages, relevant = [], False
        if self.kb is not None:
            retrieval = await asyncio.to_thread(self.kb.query, query, s.top_k)
            relevant = retrieval.relevant
            passages = [p for p in retrieval.passages if p.score >= s.relevance_threshold] if relevant else []
        relevant = relevant and bool(passages)
        grounding = Grounding(text, query, passages, relevant)
        if relevant:
            rows = await asyncio.to_thread(ranked_sentences, query, passages, 3, self.kb)
            ranked, contexts = [r[1] for r in rows], [r[0] for r in rows]
            kind = answer_type(text) if asks_for_fact(text) else None
            # Typed questions ("how much…", "who…") must be answered by a sentence of that type about
            # the thing asked; any other question keeps the best sentence.
            chosen = choose_answer(text, ranked, kind, contexts) if kind is not None else (ranked[0] if ranked else None)
            grounding.answer = chosen or ""
            if kind is not None and chosen is None:
                # The notes are about the thing asked, but none of their sentences gives what was
                # asked for (a phone number, a price, a name…): say so, and what they do say.
                grounding.decline = decline(text, ranked[0] if ranked else None)
        return grounding

    async def _prepare(self, text: str) -> None:
        """At a pause: retrieve and evaluate the prompt for the words so far, before the turn ends.

        If the user says nothing more (the usual case: the VAD is only waiting out its silence), the
        reply then starts from a prompt already in the LLM's KV cache.
        """
        prefill = getattr(self.llm, "prefill", None)
        if not text.strip() or self.generating or small_talk_reply(text):
            return
        s = self.settings
        g = await self._retrieve(text)
        self._speculation = g
        if prefill is None or g.decline or (not g.relevant and asks_for_fact(g.query)) or (g.relevant and self._quotes()):
            return
        history = self.conversation.history(s.history_turns)
        messages = build_messages(text, history, g.passages, g.relevant, s.persona, s.fallback_persona, self.style(), None, kb=self.kb)
        await asyncio.to_thread(prefill, messages)

    def _quotes(self) -> bool:
        """Whether answers from notes are quoted (not generated): see ``agent.answer_style``."""
        style = self.settings.answer_style
        return style == "quote" or (style == "auto" and getattr(self.llm, "embedded", False))

    async def _say(self, turn_id: int, text: str) -> None:
        await self.push_frame(LLMTextFrame(text=text, turn_id=turn_id))
        await self.push_frame(LLMFullResponseEndFrame(turn_id=turn_id, text=text))

    async def _respond(self, frame: TranscriptionFrame) -> None:
        s = self.settings
        history = self.conversation.history(s.history_turns)
        chat = small_talk_reply(frame.text, *_persona_names(s.persona))
        g = Grounding(frame.text, frame.text, [], False) if chat else await self._retrieve(frame.text)
        self.conversation.add(Turn("user", frame.text, frame.audio, frame.sample_rate))
        self._speculation = None
        emotion = None
        if self.emotion_detector is not None and frame.audio is not None and not chat:
            with contextlib.suppress(Exception):  # analysis is optional: never let it break a turn
                emotion = await asyncio.to_thread(self.emotion_detector, frame.audio, frame.sample_rate)
        await self.push_frame(
            RetrievalFrame(query=g.query, passages=g.passages, fallback=not g.relevant, emotion=emotion), DOWN
        )
        self.turn_id += 1
        turn_id = self.turn_id
        sources = list(dict.fromkeys(p.source for p in g.passages)) if not g.decline else []
        known = " ".join([frame.text, *(t for _, t in history), *(p.text for p in g.passages)])
        if sources:
            log.info("turn %d answers from %s", turn_id, ", ".join(sources))
        await self.push_frame(
            LLMFullResponseStartFrame(
                turn_id=turn_id, question=frame.text, known=known, strict=g.relevant, grounded_answer=g.answer, sources=sources
            )
        )
        if chat:
            # Greetings, thanks, goodbye, "who are you", "what can you do": the persona answers.
            await self._say(turn_id, chat)
            return
        if g.decline:
            await self._say(turn_id, g.decline)
            return
        if not g.relevant and asks_for_fact(g.query):
            # Nothing in the notes and a question of fact: no model can answer that truthfully.
            await self._say(turn_id, DONT_KNOW)
            return
        if g.relevant and g.answer and self._quotes():
            # The embedded 135M model paraphrases notes unreliably: the answer is their own sentence.
            await self._say(turn_id, g.answer)
            return
        passages, relevant = g.passages, g.relevant
        messages = build_messages(
            frame.text, history, passages, relevant, s.persona, s.fallback_persona, self.style(), emotion, kb=self.kb
        )
        stop = threading.Event()
        self._stop = stop
        text, pieces = "", 0
        self.generating = True
        try:
            async for piece in iterate_in_thread(
                lambda: self.llm.stream(messages, stop, s.llm_max_tokens, s.llm_temperature), stop
            ):
                text += piece
                pieces += 1
                await self.push_frame(LLMTextFrame(text=piece, turn_id=turn_id))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            cut = pieces >= s.llm_max_tokens and not stop.is_set()
            stop.set()
            self._stop = None
            self.generating = False
        await self.push_frame(LLMFullResponseEndFrame(turn_id=turn_id, text=text.strip(), cut=cut))


class SentenceProcessor(FrameProcessor):
    """Streamed LLM text → short pieces for the TTS, each checked before it is spoken.

    * The first piece is a few words (the first audio starts early), then whole sentences.
    * A piece with a number (or, for answers from notes, a name) that the model was not given, or an
      answer from notes made mostly of other words than theirs, is not spoken: the notes' own
      sentence replaces it, and generation stops.
    * After ``max_sentences`` sentences the reply is complete: generation stops (the persona's
      length limit). A reply the token budget cut mid-sentence loses its unfinished tail.
    """

    def __init__(self, max_sentences: int = 2, first_words: int = 4) -> None:
        super().__init__()
        self._fast = SentenceSplitter(first_clause_chars=12, first_words=first_words)
        # Replies checked against what the model was given: a sentence is checked whole before any
        # of it is spoken (no first words of an invented answer, then the notes' sentence).
        self._whole = SentenceSplitter(first_clause_chars=0, first_words=0)
        self.splitter = self._fast
        self.max_sentences = max_sentences
        self.index = 0
        self._start: LLMFullResponseStartFrame | None = None
        self._sentences = 0
        self._done = False
        self._first = ""  # the reply's first sentence so far
        self.rejected: list[str] = []  # pieces not spoken because they were not grounded

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, InterruptionFrame | LLMFullResponseStartFrame):
            self.splitter.reset()
            self.index = self._sentences = 0
            self._done = False
            self._first = ""
            self._start = frame if isinstance(frame, LLMFullResponseStartFrame) else None
            self.splitter = self._whole if self._start is not None and self._start.known else self._fast
            self.splitter.reset()
        if isinstance(frame, LLMFullResponseEndFrame) and not self._done:
            # The last (maybe unpunctuated) sentence goes out before the end marker, unless the token
            # budget cut it mid-sentence: then the reply ends at its last whole sentence.
            for piece in self.splitter.flush():
                if frame.cut and not _ends_sentence(piece) and self.index:
                    log.info("dropped the unfinished end of a reply cut by the token budget: %r", piece)
                    continue
                await self._accept(piece if _ends_sentence(piece) else piece + ".", frame.turn_id)
        await self.push_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and not self._done:
            for piece in self.splitter.push(frame.text):
                if self._done:
                    break
                await self._accept(piece, frame.turn_id)

    async def _accept(self, piece: str, turn_id: int) -> None:
        piece = strip_labels(piece)
        if not piece:
            return
        start = self._start
        if start is not None and start.known:
            bad = ungrounded(piece, start.known, names=start.strict)
            if start.strict and support(piece, start.known) < 0.5:
                bad.append("words not from the notes")
            if start.strict and start.grounded_answer and not self._sentences and _ends_sentence(piece):
                # The first sentence must carry something of the notes' answer beyond the question's words.
                first = self._first + " " + piece
                if not answers(first, start.grounded_answer, start.question):
                    bad.append("no answer from the notes")
            if bad:
                self.rejected.append(piece)
                log.warning("not spoken (not in the notes: %s): %r", ", ".join(bad), piece)
                replacement = start.grounded_answer if start.strict and start.grounded_answer else DONT_KNOW
                await self._emit(replacement, turn_id)
                await self._finish(turn_id, "ungrounded")
                return
        await self._emit(piece, turn_id)
        if not self._sentences:
            self._first += " " + piece
        if _ends_sentence(piece):
            self._sentences += 1
            if self._sentences >= self.max_sentences:
                await self._finish(turn_id, "length")

    async def _finish(self, turn_id: int, reason: str) -> None:
        self._done = True
        await self.push_frame(LLMStopFrame(turn_id=turn_id, reason=reason), UP)

    async def _emit(self, sentence: str, turn_id: int) -> None:
        await self.push_frame(TTSTextFrame(text=sentence, turn_id=turn_id, index=self.index))
        self.index += 1


def _ends_sentence(piece: str) -> bool:
    return piece.rstrip("\"')] ").endswith((".", "!", "?", "…"))


class TTSProcessor(FrameProcessor):
    """Speaks each sentence through the engine (in a worker thread), with the conversation as context."""

    def __init__(
        self,
        engine: TTSEngine,
        conversation: Conversation,
        settings: AgentSettings,
        voice: Callable[[], str | None] | None = None,
        voice_prompt: Callable[[str | None], Segment | None] | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.conversation = conversation
        self.settings = settings
        self.voice = voice or (lambda: settings.voice)
        self.voice_prompt = voice_prompt or (lambda _voice: None)
        self.cancelled = 0
        # Hooks for protocol adapters (the Realtime API): the speaking rate, text-only replies
        # (sentences still go through, without audio) and a tap on each sentence as it is spoken.
        self.speed = 1.0
        self.speak = True
        self.on_text: Callable[[TTSTextFrame], None] | None = None

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if not isinstance(frame, TTSTextFrame):
            await self.push_frame(frame, direction)
            return
        if self.on_text is not None:
            self.on_text(frame)
        if not self.speak:
            await self._end_sentence(frame)
            return
        s = self.settings
        voice = self.voice()
        # A saved voice's reference clip leads the context, pinned: CSM keeps it when the
        # conversation fills its window and drops the oldest turns instead.
        prompt = self.voice_prompt(voice)
        stop = threading.Event()
        request = SynthesisRequest(
            text=frame.text,
            voice=voice,
            speaker=s.speaker,
            context=([prompt.as_voice_prompt()] if prompt is not None else [])
            + self.conversation.tts_context(s.tts_context_turns, self.engine.sample_rate),
            should_stop=stop.is_set,  # barge-in: CSM drops this row at the next frame
            speed=self.speed,
        )
        try:
            async for chunk in iterate_in_thread(lambda: self.engine.stream(request), stop):
                chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                if chunk.size:
                    await self.push_frame(
                        TTSAudioRawFrame(
                            audio=chunk,
                            sample_rate=self.engine.sample_rate,
                            text=frame.text,
                            turn_id=frame.turn_id,
                            index=frame.index,
                        )
                    )
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        await self._end_sentence(frame)

    async def _end_sentence(self, frame: TTSTextFrame) -> None:
        await self.push_frame(
            TTSAudioRawFrame(
                audio=np.zeros(0, np.float32),
                sample_rate=self.engine.sample_rate,
                text=frame.text,
                turn_id=frame.turn_id,
                index=frame.index,
                last=True,
            )
        )


@dataclass
class _Sentence:
    text: str
    sent: int = 0  # samples sent to the player
    complete: bool = False  # the TTS finished it


@dataclass
class _Reply:
    turn_id: int
    sentences: dict[int, _Sentence] = field(default_factory=dict)
    audio: list[np.ndarray] = field(default_factory=list)
    sample_rate: int = 24_000
    full_text: str = ""
    sources: list[str] = field(default_factory=list)


class OutputProcessor(FrameProcessor):
    """Paces agent audio to real time, tracks what was heard, commits assistant turns.

    A separate playback task drains a buffer of fixed-size chunks so that text frames are never held
    behind audio. Each chunk goes out as an :class:`OutputAudioRawFrame` once the already-sent audio is
    within ``playback_lead_ms`` of the wall clock.
    """

    def __init__(
        self,
        conversation: Conversation,
        settings: AgentSettings,
        detector: TurnDetector | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock or Clock()
        self.conversation = conversation
        self.settings = settings
        self.detector = detector
        self._buffer: deque[tuple[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._play_task: asyncio.Task | None = None
        self._reply: _Reply | None = None
        self._play_until = 0.0  # monotonic time at which everything sent so far has been played
        self.speaking = False
        self.chunks_sent = 0
        # Set by UserStartedSpeakingFrame, which reaches us before the InterruptionFrame right behind
        # it: the interruption's cancellations yield to the loop, and no chunk may slip out meanwhile.
        self._hold = False

    async def start(self) -> None:
        await super().start()
        self._wake = asyncio.Event()
        self._play_task = asyncio.create_task(self._play(), name="output-play")

    async def stop(self) -> None:
        from echoforge.agent.processors import cancel_task

        await cancel_task(self._play_task)
        await super().stop()

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, InterruptionFrame) and direction is DOWN:
            await self._interrupt(frame)
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._hold = True
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._reply = _Reply(frame.turn_id, sources=list(frame.sources))
        elif isinstance(frame, TTSAudioRawFrame):
            self._enqueue_audio(frame)
            return
        elif isinstance(frame, LLMFullResponseEndFrame):
            if self._reply is not None and self._reply.turn_id == frame.turn_id:
                self._reply.full_text = frame.text
            self._buffer.append(("end", frame.turn_id))
            self._wake.set()
        await self.push_frame(frame, direction)

    def spoken_so_far(self) -> dict[int, bool]:
        """The current reply's sentences that reached the output: ``{index: complete}`` (for tests, UIs)."""
        reply = self._reply
        return {i: s.complete for i, s in reply.sentences.items()} if reply is not None else {}

    def _enqueue_audio(self, frame: TTSAudioRawFrame) -> None:
        reply = self._reply
        if reply is None or reply.turn_id != frame.turn_id:
            return  # audio of a reply that was interrupted
        reply.sample_rate = frame.sample_rate
        sentence = reply.sentences.setdefault(frame.index, _Sentence(frame.text))
        if frame.last:
            sentence.complete = True
            return
        step = max(1, frame.sample_rate * self.settings.output_chunk_ms // 1000)
        for i in range(0, frame.audio.size, step):
            self._buffer.append(("audio", (frame.index, frame.audio[i : i + step], frame.sample_rate)))
        self._wake.set()

    async def _play(self) -> None:
        lead = self.settings.playback_lead_ms / 1000
        while True:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                continue
            kind, item = self._buffer.popleft()
            if kind == "end":
                await self.clock.sleep(self._play_until - self.clock.now())
                await self._finish_reply(item)
                continue
            index, chunk, sr = item
            wait = self._play_until - self.clock.now() - lead
            if wait > 0:
                await self.clock.sleep(wait)
            reply = self._reply
            if reply is None or self._hold:
                continue
            if not self.speaking:
                self.speaking = True
                await self._announce(BotStartedSpeakingFrame())
            now = self.clock.now()
            self._play_until = max(self._play_until, now) + chunk.size / sr
            reply.sentences[index].sent += chunk.size
            reply.audio.append(chunk)
            if self.detector is not None:
                self.detector.note_playback(chunk)
            self.chunks_sent += 1
            await self.push_frame(OutputAudioRawFrame(audio=chunk, sample_rate=sr))

    async def _announce(self, frame: Frame) -> None:
        """Bot speaking frames go upstream (the VAD guard) and on to the observer."""
        await self.push_frame(frame, UP)

    async def _finish_reply(self, turn_id: int) -> None:
        reply = self._reply
        if reply is None or reply.turn_id != turn_id:
            return
        self._reply = None
        text = " ".join(reply.sentences[i].text for i in sorted(reply.sentences)) or reply.full_text
        self._commit(reply, text, interrupted=False)
        await self.push_frame(AssistantTurnFrame(text=text, full_text=reply.full_text, interrupted=False, sources=reply.sources))
        if self.speaking:
            self.speaking = False
            await self._announce(BotStoppedSpeakingFrame(interrupted=False))

    def _heard_text(self, reply: _Reply) -> str:
        """The words actually played: whole sentences, then the played fraction of the current one.

        Audio sent within the last ``playback_lead_ms`` is still in the player's buffer, so it is
        subtracted; the cut sentence keeps the share of its words that matches the share of its
        audio heard (audio known so far: sent + queued).
        """
        unplayed = max(0.0, self._play_until - self.clock.now()) * reply.sample_rate
        heard_left = sum(s.sent for s in reply.sentences.values()) - unplayed
        words: list[str] = []
        for i in sorted(reply.sentences):
            sentence = reply.sentences[i]
            total = self._sentence_total(reply, i)
            heard = min(sentence.sent, max(0.0, heard_left))
            heard_left -= sentence.sent
            sentence_words = sentence.text.split()
            if total and heard >= total and sentence.complete:
                words += sentence_words
                continue
            n = int(len(sentence_words) * heard / total) if total else 0
            words += sentence_words[:n]
            break
        return " ".join(words)

    def _sentence_total(self, reply: _Reply, index: int) -> int:
        """Samples of sentence ``index`` that reached the output buffer (sent + still queued)."""
        queued = sum(item[1].size for kind, item in self._buffer if kind == "audio" and item[0] == index)
        return reply.sentences[index].sent + queued

    async def _interrupt(self, frame: InterruptionFrame) -> None:
        reply = self._reply
        heard = ""
        if reply is not None and any(s.sent for s in reply.sentences.values()):
            heard = self._heard_text(reply)  # before the buffer is cleared: it sizes the cut sentence
        self._buffer.clear()
        self._hold = False
        self._play_until = self.clock.now()
        await self.push_frame(frame, DOWN)  # transports flush their players first
        if reply is not None:
            self._reply = None
            self._commit(reply, heard, interrupted=True)
            await self.push_frame(AssistantTurnFrame(text=heard, full_text=reply.full_text, interrupted=True, sources=reply.sources))
        if self.speaking:
            self.speaking = False
            await self._announce(BotStoppedSpeakingFrame(interrupted=True))

    def _commit(self, reply: _Reply, text: str, interrupted: bool) -> None:
        audio = np.concatenate(reply.audio) if reply.audio else None
        if text or interrupted:
            self.conversation.add(Turn("assistant", text, audio, reply.sample_rate, interrupted=interrupted))


# --- latency --------------------------------------------------------------------------------------


@dataclass
class TurnLatency:
    """Seconds of one turn: stages from the VAD's end-of-turn decision (``vad_end``); voice-to-voice
    from the end of the user's speech (``speech_end``: what the user waits), ``vad_wait_s`` between."""

    vad_end: float
    speech_end: float | None = None
    transcript: float | None = None
    retrieval: float | None = None
    first_token: float | None = None
    first_audio: float | None = None
    text: str = ""

    def as_dict(self) -> dict[str, float | None]:
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - self.vad_end, 4)

        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 4)

        return {
            "stt_s": delta(self.vad_end, self.transcript),
            "rag_s": delta(self.transcript, self.retrieval),
            "llm_first_token_s": delta(self.retrieval or self.transcript, self.first_token),
            "tts_first_audio_s": delta(self.first_token, self.first_audio),
            "transcript_at_s": rel(self.transcript),
            "first_token_at_s": rel(self.first_token),
            "vad_wait_s": delta(self.speech_end, self.vad_end),
            "voice_to_voice_s": delta(self.vad_end if self.speech_end is None else self.speech_end, self.first_audio),
        }


# --- the agent ------------------------------------------------------------------------------------


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
        self.tts = TTSProcessor(engine, self.conversation, settings, lambda: self.voice, voice_prompt)
        self.output = OutputProcessor(self.conversation, settings, detector, clock)
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


def vad_params(s: AgentSettings) -> VADParams:
    """The VAD part of the agent settings (``agent.turn``, pause events from ``stt_partial_ms``)."""
    return s.turn.vad_params(s.stt_partial_ms)
