"""EchoForgeTTSService as a word-timestamp TTS service, in a real pipecat pipeline against a real
``echoforge serve`` (espeak-ng, whose word events are exact): each word is a ``TTSTextFrame``
released after its audio, so an interruption leaves the assistant's context at the last word spoken."""

from __future__ import annotations

import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import LLMAssistantAggregator  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from echoforge.integrations.pipecat import EchoForgeTTSService  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ANSWER = "The museum opens at nine tomorrow. Tickets cost ten dollars, and children go free. Bring a coat."


class Listener(FrameProcessor):
    """Stands where the user hears the bot: audio and word frames in playback order. After
    ``after`` words the user barges in (an interruption, as the VAD would raise); it keeps the
    words that reached it before the interruption did (the words the user heard)."""

    def __init__(self, after: int | None = None) -> None:
        super().__init__()
        self.after = after
        self.words: list[TTSTextFrame] = []
        self.audio_before_word: list[int] = []
        self.audio = 0
        self.fired = False
        self.interrupted = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self.interrupted = True
        if isinstance(frame, TTSAudioRawFrame) and not self.interrupted:
            self.audio += len(frame.audio)
        if isinstance(frame, TTSTextFrame) and not self.interrupted:
            self.words.append(frame)
            self.audio_before_word.append(self.audio)
        await self.push_frame(frame, direction)
        if self.after is not None and not self.fired and len(self.words) == self.after:
            self.fired = self.interrupted = True
            await self.broadcast_interruption()  # the user starts talking over the bot


def _assistant_text(context: LLMContext) -> list[str]:
    return [m["content"] for m in context.get_messages() if m.get("role") == "assistant"]


def _reply() -> list[Frame]:
    return [LLMFullResponseStartFrame(), LLMTextFrame(ANSWER), LLMFullResponseEndFrame()]


async def test_every_word_is_a_frame_after_its_audio_with_increasing_times(echoforge_server):
    tts = EchoForgeTTSService(base_url=echoforge_server, voice="atlas", sample_rate=22050)
    listener = Listener()
    down, up = await run_test(Pipeline([tts, listener]), frames_to_send=_reply())
    assert not [f for f in up if isinstance(f, ErrorFrame)], up
    assert [w.text for w in listener.words] == ANSWER.split()
    assert all(n > 0 for n in listener.audio_before_word)  # no word before any of its audio
    pts = [w.pts for w in listener.words]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)


async def test_an_interruption_leaves_the_context_at_the_last_spoken_word(echoforge_server):
    tts = EchoForgeTTSService(base_url=echoforge_server, voice="atlas", sample_rate=22050)
    listener = Listener(after=8)  # mid second sentence: "… Tickets cost | ten dollars, …"
    context = LLMContext()
    down, up = await run_test(
        Pipeline([tts, listener, LLMAssistantAggregator(context)]),
        frames_to_send=[*_reply(), SleepFrame(1.0), TTSSpeakFrame("Still here.")],
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)], up
    assert listener.fired and listener.interrupted
    heard = [w.text for w in listener.words]
    words = ANSWER.split()
    assert heard == words[:8]
    # The interrupted turn enters the context word by word, up to the last word that reached it
    # before the interruption (the interruption overtakes the words still queued between the two
    # processors, so that is the 8th word or one or two before it): mid-sentence, not whole sentences.
    first = _assistant_text(context)[0].split()
    assert first == heard[: len(first)] and len(heard) - 2 <= len(first) <= len(heard)
    assert "dollars," not in first


async def test_sentence_text_frames_without_word_timestamps(echoforge_server):
    """word_timestamps=False: pipecat's sentence frames, so an interruption keeps the whole sentence."""
    tts = EchoForgeTTSService(base_url=echoforge_server, voice="atlas", sample_rate=22050, word_timestamps=False)
    assert "timestamps" not in tts._start_message()
    listener = Listener()
    await run_test(Pipeline([tts, listener]), frames_to_send=_reply())
    assert listener.words and listener.words[0].text == "The museum opens at nine tomorrow."
