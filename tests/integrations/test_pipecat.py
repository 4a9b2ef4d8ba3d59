"""EchoForgeTTSService inside real pipecat pipelines, against a real ``echoforge serve`` (espeak-ng)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    ErrorFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.task import PipelineParams  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from echoforge.integrations.pipecat import EchoForgeTTSService, stream_url  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LONG = " ".join(f"This is sentence number {i} of a long answer that nobody wants to hear." for i in range(1, 25))


def _audio(frames: list[Frame]) -> list[TTSAudioRawFrame]:
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


def _samples(frames: list[TTSAudioRawFrame]) -> np.ndarray:
    return np.frombuffer(b"".join(f.audio for f in frames), dtype="<i2").astype(np.float32) / 32768


def test_stream_url():
    assert stream_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/api/stream"
    assert stream_url("https://tts.example/") == "wss://tts.example/api/stream"
    assert stream_url("ws://h:1/api/stream") == "ws://h:1/api/stream"
    with pytest.raises(ValueError):
        stream_url("127.0.0.1:8000")


async def test_a_pipeline_speaks_through_echoforge(echoforge_server):
    tts = EchoForgeTTSService(base_url=echoforge_server, voice="juniper", tone="gently")
    down, up = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame("Hello from EchoForge. Pipecat speaks through it.")],
        pipeline_params=PipelineParams(audio_out_sample_rate=16000),  # the server streams 22050 Hz
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)], up
    audio = _audio(down)
    assert len(audio) > 1, "audio should arrive in several frames, as it is generated"
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(16000, 1)}
    samples = _samples(audio)
    assert samples.size > 16000 // 2 and float(np.sqrt(np.mean(samples**2))) > 1e-3
    kinds = [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSAudioRawFrame, TTSStoppedFrame))]
    assert kinds[0] is TTSStartedFrame and kinds[-1] is TTSStoppedFrame


async def test_unknown_voice_is_an_error_frame(echoforge_server):
    tts = EchoForgeTTSService(base_url=echoforge_server, voice="no-such-voice")
    down, up = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hello.")])
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and "no-such-voice" in errors[0].error
    assert not _audio(down)


async def test_settings_update_changes_voice_and_sampling(echoforge_server):
    tts = EchoForgeTTSService(base_url=echoforge_server, voice="no-such-voice")
    update = TTSUpdateSettingsFrame(delta=EchoForgeTTSService.Settings(voice="atlas", temperature=0.5, speed=1.2))
    down, up = await run_test(tts, frames_to_send=[update, TTSSpeakFrame("Now with a voice that exists.")])
    assert not [f for f in up if isinstance(f, ErrorFrame)], up
    assert tts._start_message() == {"type": "start", "voice": "atlas", "format": "pcm", "temperature": 0.5, "speed": 1.2}
    assert _samples(_audio(down)).size > 0


class BargeIn(FrameProcessor):
    """Interrupts (like a VAD hearing the user) at the first audio frame, once."""

    def __init__(self) -> None:
        super().__init__()
        self.fired = False
        self.after: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if self.fired and isinstance(frame, TTSAudioRawFrame):
            self.after.append(frame)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and not self.fired:
            self.fired = True
            await self.broadcast_interruption()


async def test_interruption_stops_the_stream_and_the_service_carries_on(echoforge_server):
    tts = EchoForgeTTSService(base_url=echoforge_server, voice="atlas", sample_rate=22050)
    barge = BargeIn()
    down, up = await run_test(
        Pipeline([tts, barge]),
        frames_to_send=[TTSSpeakFrame(LONG), SleepFrame(1.0), TTSSpeakFrame("Still here.")],
    )
    assert barge.fired
    assert tts.sessions == 2  # the interrupted connection was replaced by a fresh one (pipecat's InterruptibleTTSService)
    assert any(isinstance(f, InterruptionFrame) for f in down)
    assert not [f for f in up if isinstance(f, ErrorFrame)], up
    # Of the long answer, only what came before the interruption; then "Still here." in full.
    spoken = _samples(barge.after)
    assert 22050 // 4 < spoken.size < 22050 * 4, spoken.size / 22050
