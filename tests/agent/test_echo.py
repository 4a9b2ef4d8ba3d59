"""Self-interruption: the agent's own voice comes back through a simulated room into its microphone.

A virtual sound card runs in 20 ms ticks at real-time pace: what the agent sends is played by a
"speaker" (the reference handed to the :class:`EchoCanceller`, stamped with the time it is
played, as the CLI's output callback does), and the "microphone" hears it ``delay`` later at
``gain`` — plus, in the barge-in case, a second real voice (espeak's other voice) talking over it.
The cleaned microphone audio goes into the agent exactly like the CLI's input callback does.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import numpy as np
import pytest

from echoforge.agent.frames import (
    AssistantTurnFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
)
from echoforge.audio import resample

pytest.importorskip("livekit")

REPLY = (
    "EchoForge runs on your own machine and keeps your audio there. It speaks with CSM when a GPU is present, "
    "and with Piper or espeak otherwise. You can interrupt it at any moment by talking over it."
)
TICK = 320  # 20 ms at 16 kHz

pytestmark = pytest.mark.integration  # real models: Silero, Whisper, llama.cpp, espeak


class ScriptedLLM:
    """A fixed long reply, streamed word by word (the room, not the language model, is under test)."""

    name = "scripted"

    def stream(self, messages, stop: threading.Event, max_tokens: int = 96, temperature: float = 0.3):
        for word in REPLY.split(" "):
            if stop.is_set():
                return
            time.sleep(0.005)
            yield word + " "


class Room:
    """Speaker → (delay, gain) → microphone → echo canceller → agent, on a shared 16 kHz sample clock."""

    def __init__(self, agent, aec, gain: float, delay_s: float = 0.15) -> None:
        self.agent, self.aec, self.gain = agent, aec, gain
        self.delay = int(delay_s * 16_000)
        self.speaker: collections.deque[np.ndarray] = collections.deque()
        self.pending = np.zeros(0, np.float32)
        self.played = np.zeros(0, np.float32)  # everything the speaker rendered, sample-aligned with the clock
        self.voice = np.zeros(0, np.float32)  # a person in the room, mixed into the microphone
        self.frames: list = []
        self.ticks = 0

    def take(self, frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, OutputAudioRawFrame):
            self.speaker.append(resample(frame.audio, frame.sample_rate, 16_000))
        elif isinstance(frame, InterruptionFrame):
            self.speaker.clear()
            self.pending = np.zeros(0, np.float32)

    def _speaker_block(self) -> np.ndarray:
        while self.pending.size < TICK and self.speaker:
            self.pending = np.concatenate([self.pending, self.speaker.popleft()])
        block = np.zeros(TICK, np.float32)
        n = min(TICK, self.pending.size)
        block[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return block

    async def tick(self) -> None:
        start = self.ticks * TICK
        t = start / 16_000
        block = self._speaker_block()
        self.aec.play(block, 16_000, t)  # the "device" renders this block now
        self.played = np.concatenate([self.played, block])
        # The microphone hears the speaker `delay` later (the canceller is not told about it).
        echo_from = start - self.delay
        echo = np.zeros(TICK, np.float32)
        if echo_from + TICK > 0:
            seg = self.played[max(0, echo_from) : echo_from + TICK]
            echo[TICK - seg.size :] = seg
        mic = self.gain * echo
        if self.voice.size:
            n = min(TICK, self.voice.size)
            mic[:n] += self.voice[:n]
            self.voice = self.voice[n:]
        await self.agent.push_audio(self.aec.capture(mic, t), 16_000)
        self.ticks += 1

    async def run_until(self, done, timeout: float = 40.0) -> None:
        t0 = time.monotonic()
        while not done():
            assert time.monotonic() - t0 < timeout, "the room simulation did not finish"
            while (frame := self.agent.next_event_nowait()) is not None:
                self.take(frame)
            await self.tick()
            await asyncio.sleep(max(0.0, t0 + self.ticks * TICK / 16_000 - time.monotonic()))


@pytest.fixture
def echo_agent(models, espeak):
    from echoforge.agent.pipeline import VoiceAgent

    def make():
        cfg = models.settings.model_copy(update={"reply_max_sentences": 10, "llm_max_tokens": 200})
        return VoiceAgent(espeak, cfg, models.stt, ScriptedLLM(), None, None, vad=models.new_detector())

    return make


def of(frames, kind):
    return [f for f in frames if isinstance(f, kind)]


@pytest.mark.parametrize("gain", [0.3, 1.0])
async def test_own_voice_through_the_room_never_interrupts(echo_agent, gain):
    from echoforge.agent.aec import EchoCanceller

    agent = echo_agent()
    room = Room(agent, EchoCanceller(), gain)
    await agent.start()
    try:
        await agent.pipeline.queue_frame(TranscriptionFrame(text="Say something nice."))
        await room.run_until(lambda: bool(of(room.frames, AssistantTurnFrame)))
    finally:
        await agent.stop()
    spoken = sum(f.audio.size for f in of(room.frames, OutputAudioRawFrame)) / agent.engine.sample_rate
    final = of(room.frames, AssistantTurnFrame)[0]
    assert spoken > 5.0, (final, [f for f in room.frames if type(f).__name__ in ("LogFrame", "ErrorFrame", "LLMFullResponseEndFrame")])  # the whole reply played into the room
    assert not of(room.frames, UserStartedSpeakingFrame), f"interrupted itself at echo gain {gain}"
    final = of(room.frames, AssistantTurnFrame)[0]
    assert not final.interrupted


async def test_a_second_voice_over_the_echo_barges_in(echo_agent, espeak_voice):
    from echoforge.agent.aec import EchoCanceller

    agent = echo_agent()
    room = Room(agent, EchoCanceller(), gain=0.6)
    await agent.start()
    try:
        await agent.pipeline.queue_frame(TranscriptionFrame(text="Say something nice."))
        # Two seconds of the agent alone (the canceller converges), then a person talks over it.
        await room.run_until(lambda: room.ticks * TICK >= 16_000 * 2 and bool(of(room.frames, OutputAudioRawFrame)))
        voice = espeak_voice("Hold on, please stop talking now.")
        onset = int(np.argmax(np.abs(voice) > 0.05)) / 16_000  # the voice's first sound
        room.voice = voice
        talk_starts = room.ticks
        await room.run_until(lambda: bool(of(room.frames, UserStartedSpeakingFrame)) or room.ticks - talk_starts > 150)
    finally:
        await agent.stop()
    barge = of(room.frames, UserStartedSpeakingFrame)
    assert barge and barge[0].during_bot_speech
    # Confirmed within half a second of the voice's first sound (interrupt_min_speech_ms = 250 ms of
    # confident speech, plus one tick of this simulation).
    assert (room.ticks - talk_starts) * TICK / 16_000 - onset <= 0.5


@pytest.fixture(scope="session")
def espeak_voice():
    """``espeak_voice(text) -> 16 kHz float32`` in a voice other than the agent's (espeak-ng's female en-us)."""
    import subprocess

    import soundfile as sf

    def make(text: str) -> np.ndarray:
        raw = subprocess.run(["espeak-ng", "-v", "en-us+f3", "-s", "165", "--stdout", text], capture_output=True, check=True).stdout
        import io

        audio, sr = sf.read(io.BytesIO(raw), dtype="float32")
        return 0.8 * resample(audio.reshape(-1), sr, 16_000) / max(1e-6, float(np.abs(audio).max()))

    return make
