"""The STT stage: :class:`STTProcessor` turns each user turn's audio into a transcript.

Owns when the recogniser runs (at the user's pauses, then the tail at the end of the turn) and the
interim / final transcription frames. The recogniser itself (faster-whisper) lives in
:mod:`echoforge.agent.stt`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from echoforge.agent.frames import (
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserAudioFrame,
    UserPauseAudioFrame,
    UserStartedSpeakingFrame,
)
from echoforge.agent.processors import Direction, FrameProcessor


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
