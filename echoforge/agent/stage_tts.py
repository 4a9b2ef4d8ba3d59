"""The TTS stage: :class:`TTSProcessor` speaks each sentence through the engine.

Owns the synthesis request of one sentence (voice, voice prompt, the conversation as context,
speed), streaming its audio, and the hooks protocol adapters use (text-only replies, a tap on
each sentence). In the server the audio comes through the synthesis service like every other
caller's (``synthesize=services.synthesis.stream``: one admission point, metrics); standalone
(the CLI) the engine streams in a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import numpy as np

from echoforge.agent.config import AgentSettings
from echoforge.agent.conversation import Conversation
from echoforge.agent.frames import (
    Frame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from echoforge.agent.processors import Direction, FrameProcessor, iterate_in_thread
from echoforge.engines.base import Segment, SynthesisRequest, TTSEngine
from echoforge.text import audio_budget_ms


class TTSProcessor(FrameProcessor):
    """Speaks each sentence through the engine (in a worker thread), with the conversation as context."""

    def __init__(
        self,
        engine: TTSEngine,
        conversation: Conversation,
        settings: AgentSettings,
        voice: Callable[[], str | None] | None = None,
        voice_prompt: Callable[[str | None], Segment | None] | None = None,
        synthesize: Callable[[SynthesisRequest], AsyncIterator[np.ndarray]] | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.synthesize = synthesize
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
            # The sentence's own budget (twice its expected length + 2 s), as the server gives each
            # request: a CSM sentence that never samples its end frame stops there, not after 90 s.
            max_audio_length_ms=audio_budget_ms(frame.text, self.speed),
        )
        timer = None
        if getattr(self.engine, "reports_word_timings", False):  # the engine's own word events: free
            from echoforge.engines.timing import timer_for

            timer, request = timer_for(self.engine, request)
        try:
            if self.synthesize is not None:
                chunks = self.synthesize(request)  # closing it (cancellation) stops the engine's row
            else:
                chunks = iterate_in_thread(lambda: self.engine.stream(request), stop)
            async for chunk in chunks:
                chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                if timer is not None:
                    timer.add(chunk)
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
        words = None
        if timer is not None:
            timer.finish()
            words = timer.words
        await self._end_sentence(frame, words)

    async def _end_sentence(self, frame: TTSTextFrame, words: list | None = None) -> None:
        await self.push_frame(
            TTSAudioRawFrame(
                audio=np.zeros(0, np.float32),
                sample_rate=self.engine.sample_rate,
                text=frame.text,
                turn_id=frame.turn_id,
                index=frame.index,
                last=True,
                words=words,
            )
        )
