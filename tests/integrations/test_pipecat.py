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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # a hang guard sized for a busy box

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
    assert tts._start_message() == {"type": "start", "voice": "atlas", "format": "pcm", "timestamps": True, "temperature": 0.5, "speed": 1.2}
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


#  one persistent connection, one context per turn, TOKEN mode, reconnect


pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.services.tts_service import TextAggregationMode  # noqa: E402

from .test_pipecat import _audio, _samples  # noqa: E402

TOKENS = ["Hello", " there", ", my", " friend", ".", " How are", " you", " today", "?"]


def _turn(tokens: list[str]) -> list:
    return [LLMFullResponseStartFrame(), *[LLMTextFrame(t) for t in tokens], LLMFullResponseEndFrame()]


async def _speak(echoforge_server, mode: TextAggregationMode, frames: list) -> tuple[EchoForgeTTSService, list, list]:
    tts = EchoForgeTTSService(base_url=echoforge_server, voice="atlas", sample_rate=22050, text_aggregation_mode=mode)
    down, up = await run_test(tts, frames_to_send=frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)], up
    return tts, down, up


async def test_token_mode_is_one_session_and_sounds_like_sentence_mode(echoforge_server):
    tts, down, _ = await _speak(echoforge_server, TextAggregationMode.TOKEN, _turn(TOKENS))
    sentence_tts, sentence_down, _ = await _speak(echoforge_server, TextAggregationMode.SENTENCE, _turn(TOKENS))
    assert tts.sessions == 1 and sentence_tts.sessions == 1  # one WebSocket, not one per token / sentence
    assert sum(isinstance(f, TTSStartedFrame) for f in down) == 1  # one utterance for the turn
    tokens, sentences = _samples(_audio(down)), _samples(_audio(sentence_down))
    assert tokens.size > 22050  # both sentences were spoken
    # The server cut the token stream at the same sentences: the same audio, not choppy fragments.
    assert tokens.size == pytest.approx(sentences.size, rel=0.03), (tokens.size, sentences.size)


async def test_turns_share_one_connection(echoforge_server):
    frames = [TTSSpeakFrame("First turn."), SleepFrame(0.5), TTSSpeakFrame("Second turn."), SleepFrame(0.5),
              TTSSpeakFrame("Third turn.")]  # fmt: skip
    tts, down, _ = await _speak(echoforge_server, TextAggregationMode.SENTENCE, frames)
    assert tts.sessions == 1
    assert sum(isinstance(f, TTSStartedFrame) for f in down) == 3  # one context per turn
    assert _samples(_audio(down)).size > 22050


async def test_a_dropped_connection_is_reopened(echoforge_server):
    class Dropper(EchoForgeTTSService):
        """Drops the connection after the first turn's text, as a network hiccup would."""

        async def run_tts(self, text, context_id):
            async for frame in super().run_tts(text, context_id):
                yield frame
            if text.startswith("Before") and self._websocket is not None:
                await self._websocket.transport.close() if hasattr(self._websocket, "transport") else None

    tts = Dropper(base_url=echoforge_server, voice="atlas", sample_rate=22050)
    ws_holder = {}

    @tts.event_handler("on_connected")
    async def on_connected(service):
        ws_holder.setdefault("first", service._websocket)

    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSSpeakFrame("Before the drop."),
            SleepFrame(2.0),
            TTSSpeakFrame("After the drop, still speaking."),
        ],
    )
    assert tts.sessions >= 2, "the connection should have been reopened"
    assert _samples(_audio(down)).size > 22050
