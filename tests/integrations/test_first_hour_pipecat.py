"""Issue 25 (item 10): EchoForgeTTSService in real pipecat pipelines follows pipecat's WebSocket
TTS services — one persistent connection, one context per turn, reconnect on drop — and TOKEN
aggregation speaks whole sentences (the server cuts them), not one session per token."""

from __future__ import annotations

import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
)
from pipecat.services.tts_service import TextAggregationMode  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from echoforge.integrations.pipecat import EchoForgeTTSService  # noqa: E402

from .test_pipecat import _audio, _samples  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

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
