"""The output stage: :class:`OutputProcessor` plays the agent's audio at real-time pace.

Owns the playback buffer and its pacing task, what of a reply was actually heard (``_Sentence``,
``_Reply``: samples sent per sentence), the bot started / stopped speaking frames, the cut on an
interruption and committing the assistant's turn (heard words only) to the conversation.

Word timings for the cut: the engine's own (espeak-ng), else — with an ``aligner`` (Piper, CSM) —
each sentence is aligned to its audio in a worker thread as soon as the TTS has finished it. The
cut never waits for one: a sentence not aligned yet keeps the share of its words that matches the
share of its audio played.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echoforge.agent.config import AgentSettings
from echoforge.agent.conversation import Conversation, Turn
from echoforge.agent.frames import (
    AssistantTurnFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
)
from echoforge.agent.processors import DOWN, UP, Clock, Direction, FrameProcessor
from echoforge.agent.vad import TurnDetector
from echoforge.analysis.alignment import align_words
from echoforge.captions import words_heard

log = logging.getLogger("echoforge.agent")


@dataclass
class _Sentence:
    text: str
    sent: int = 0  # samples sent to the player
    complete: bool = False  # the TTS finished it
    # Its word timings, one per word of ``text``: the engine's, or the aligner's once it has finished.
    words: list[dict[str, Any]] | None = None
    audio: list[np.ndarray] = field(default_factory=list)  # its audio so far, kept until it is aligned
    aligning: asyncio.Future | None = None  # the alignment running in a worker thread


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
        aligner: Callable[[np.ndarray, int, str], list[tuple[str, float, float]]] | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock or Clock()
        # Word timings for engines that do not report their own (Piper, CSM): each finished sentence
        # is aligned to its audio in a worker thread (echoforge.engines.timing), never at the cut.
        self.aligner = aligner
        self._align_failed = False  # one warning per session, not one per sentence
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
        _drop_alignments(self._reply)
        await super().stop()

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, InterruptionFrame) and direction is DOWN:
            await self._interrupt(frame)
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._hold = True
        elif isinstance(frame, LLMFullResponseStartFrame):
            _drop_alignments(self._reply)
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

    async def alignments_done(self) -> None:
        """Wait until the current reply's sentences started so far are aligned (tests; the cut never waits)."""
        reply = self._reply
        pending = [(s, s.aligning) for s in reply.sentences.values() if s.aligning is not None] if reply else []
        if pending:
            await asyncio.wait([future for _, future in pending])
        for sentence, future in pending:
            _aligned(sentence, future)  # at once, not when the loop gets to the future's callback

    def _enqueue_audio(self, frame: TTSAudioRawFrame) -> None:
        reply = self._reply
        if reply is None or reply.turn_id != frame.turn_id:
            return  # audio of a reply that was interrupted
        reply.sample_rate = frame.sample_rate
        sentence = reply.sentences.setdefault(frame.index, _Sentence(frame.text))
        if frame.last:
            sentence.complete = True
            words = getattr(frame, "words", None)
            if words and len(words) == len(sentence.text.split()):
                sentence.words = words
            elif self.aligner is not None and sentence.audio:
                self._start_alignment(sentence, frame.sample_rate)
            sentence.audio = []
            return
        if self.aligner is not None:
            sentence.audio.append(frame.audio)
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
        _drop_alignments(reply)
        text = " ".join(reply.sentences[i].text for i in sorted(reply.sentences)) or reply.full_text
        self._commit(reply, text, interrupted=False)
        await self.push_frame(AssistantTurnFrame(text=text, full_text=reply.full_text, interrupted=False, sources=reply.sources))
        if self.speaking:
            self.speaking = False
            await self._announce(BotStoppedSpeakingFrame(interrupted=False))

    def _heard_text(self, reply: _Reply) -> str:
        """The words actually played: whole sentences, then the played fraction of the current one.

        Audio sent within the last ``playback_lead_ms`` is still in the player's buffer, so it is
        subtracted; the cut sentence keeps the words whose middle was heard — by the engine's own word
        timings (espeak-ng) or, with an ``aligner`` (Piper, CSM), by its alignment if that has
        finished — else the share of its words that matches the share of its audio heard (audio known
        so far: sent + queued). Nothing here waits.
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
            if sentence.words is not None:
                # When each word is spoken (the engine's or aligned): the words whose middle has played.
                n = len(words_heard(sentence.words, heard / reply.sample_rate))
            else:
                n = int(len(sentence_words) * heard / total) if total else 0
            words += sentence_words[:n]
            break
        return " ".join(words)

    def _start_alignment(self, sentence: _Sentence, sample_rate: int) -> None:
        """Align the finished ``sentence`` in a worker thread; its timings land on ``sentence.words``."""
        audio = np.concatenate(sentence.audio)
        future = asyncio.get_running_loop().run_in_executor(None, self._align, audio, sample_rate, sentence.text)
        sentence.aligning = future
        future.add_done_callback(functools.partial(_aligned, sentence))

    def _align(self, audio: np.ndarray, sample_rate: int, text: str) -> list[dict[str, Any]] | None:
        """A sentence's word timings from its audio, or None (worker thread; never raises)."""
        try:
            recognized = self.aligner(audio, sample_rate, text)  # type: ignore[misc]
        except Exception as exc:  # no espeak-ng library, odd audio: the share-of-audio rule stands in
            if not self._align_failed:
                self._align_failed = True
                log.warning(
                    "word alignment of the agent's speech failed (%s); a barge-in keeps the share of audio heard", exc
                )
            else:
                log.debug("word alignment failed again: %s", exc)
            return None
        if not recognized:
            return None
        timed = align_words(text, recognized, audio.size / sample_rate)
        return timed if len(timed) == len(text.split()) else None

    def _sentence_total(self, reply: _Reply, index: int) -> int:
        """Samples of sentence ``index`` that reached the output buffer (sent + still queued)."""
        queued = sum(item[1].size for kind, item in self._buffer if kind == "audio" and item[0] == index)
        return reply.sentences[index].sent + queued

    async def _interrupt(self, frame: InterruptionFrame) -> None:
        reply = self._reply
        heard = ""
        if reply is not None and any(s.sent for s in reply.sentences.values()):
            heard = self._heard_text(reply)  # before the buffer is cleared: it sizes the cut sentence
        _drop_alignments(reply)
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


def _aligned(sentence: _Sentence, future: asyncio.Future) -> None:
    """An alignment finished (on the event loop): its timings become the sentence's."""
    if sentence.aligning is future and not future.cancelled():
        sentence.words = future.result()  # _align never raises
        sentence.aligning = None


def _drop_alignments(reply: _Reply | None) -> None:
    """Forget ``reply``'s alignments still running: their results are no longer wanted."""
    for sentence in reply.sentences.values() if reply is not None else ():
        if sentence.aligning is not None:
            sentence.aligning.cancel()
            sentence.aligning = None
