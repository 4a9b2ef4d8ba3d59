"""The VAD stage: :class:`VADProcessor` turns microphone audio into speech events.

Owns the pipeline's front door: runs the synchronous :class:`~echoforge.agent.vad.TurnDetector`
on each :class:`~echoforge.agent.frames.InputAudioRawFrame` and sends out the user's turn as
frames (started → interruption, pauses, stopped → the turn's audio), and tells the detector when
the agent is speaking (the bot frames that travel upstream from the output). The detector itself
(Silero, thresholds, smart-turn) lives in :mod:`echoforge.agent.vad`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from echoforge.agent.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    UserAudioFrame,
    UserPauseAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from echoforge.agent.processors import Direction, FrameProcessor
from echoforge.agent.vad import SAMPLE_RATE, TurnDetector, VADEvent


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
