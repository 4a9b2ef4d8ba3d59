"""Barge-in truncation by word timings: the cut sentence keeps the words whose middle was heard."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest

from echoforge.agent.config import AgentSettings
from echoforge.agent.frames import (
    AssistantTurnFrame,
    BotStartedSpeakingFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
)
from echoforge.agent.pipeline import Conversation, OutputProcessor, TTSProcessor
from echoforge.agent.testing import SAFETY_TIMEOUT_S, UP, FakeClock, Harness
from echoforge.engines import espeak_events
from echoforge.engines.espeak import EspeakEngine

SR = 24_000


def _frames(words: list[dict] | None) -> list[TTSAudioRawFrame]:
    text = "one two three four"
    audio = (0.2 * np.sin(np.arange(SR) * 2 * np.pi * 220 / SR)).astype(np.float32)  # 1.0 s
    return [
        TTSAudioRawFrame(audio=audio, sample_rate=SR, text=text, turn_id=1, index=0),
        TTSAudioRawFrame(
            audio=np.zeros(0, np.float32), sample_rate=SR, text=text, turn_id=1, index=0, last=True, words=words
        ),
    ]


async def _cut_after(frames: list[TTSAudioRawFrame], seconds: float, aligner=None, before_cut=None) -> str:
    """Play ``frames`` for ``seconds`` (fake clock), barge in, return the text the cut kept.

    ``before_cut(proc)`` runs once the audio is out, before the clock moves (e.g. to wait for the
    sentence's alignment, or to see that it has started).
    """
    clock = FakeClock()
    proc = OutputProcessor(Conversation(), AgentSettings(), clock=clock, aligner=aligner)
    async with Harness(proc) as h:
        await h.send(LLMFullResponseStartFrame(turn_id=1))
        for f in frames:
            await h.send(f)
        await h.wait_for(lambda f: isinstance(f, BotStartedSpeakingFrame), UP)
        await h.drain()
        if before_cut is not None:
            await before_cut(proc)
        await clock.run_for(seconds)
        await h.drain()
        await h.send(UserStartedSpeakingFrame(during_bot_speech=True))
        await h.drain()
        await h.send(InterruptionFrame(reason="barge-in"))
        cut = await h.wait_for(lambda f: isinstance(f, AssistantTurnFrame))
    return cut.text


async def test_the_cut_follows_the_word_timings_not_the_share_of_audio():
    # "three" is long and its middle (0.35 s) has played at 0.55 s; "four"'s (0.75 s) has not.
    words = [
        {"word": "one", "start_s": 0.0, "end_s": 0.1, "interpolated": False},
        {"word": "two", "start_s": 0.1, "end_s": 0.2, "interpolated": False},
        {"word": "three", "start_s": 0.2, "end_s": 0.5, "interpolated": False},
        {"word": "four", "start_s": 0.5, "end_s": 1.0, "interpolated": False},
    ]
    assert await _cut_after(_frames(words), 0.55) == "one two three"
    assert await _cut_after(_frames(None), 0.55) == "one two"  # without timings: 55 % of 4 words


class RecordingAligner:
    """An aligner with known answers: "three" long, as in the test above; records its calls.

    With ``gated=True`` each call blocks its worker thread until the test calls :meth:`release`
    (``started`` is set once a call is under way): "the alignment is still running" by construction.
    """

    def __init__(self, gated: bool = False) -> None:
        self.calls: list[tuple[int, int, str]] = []
        self.started = threading.Event()
        self._gate = threading.Event()
        if not gated:
            self._gate.set()

    def release(self) -> None:
        self._gate.set()

    def __call__(self, audio, sample_rate, text):
        self.calls.append((audio.size, sample_rate, text))
        self.started.set()
        assert self._gate.wait(SAFETY_TIMEOUT_S), "the test never released the aligner"
        return [("one", 0.0, 0.1), ("two", 0.1, 0.2), ("three", 0.2, 0.5), ("four", 0.5, 1.0)]


async def _aligned(proc: OutputProcessor) -> None:
    await proc.alignments_done()


async def test_a_sentence_aligned_before_the_cut_is_cut_by_its_word_timings():
    aligner = RecordingAligner()
    assert await _cut_after(_frames(None), 0.55, aligner, before_cut=_aligned) == "one two three"
    assert aligner.calls == [(SR, SR, "one two three four")]  # once, when its audio was complete


async def test_the_engines_own_timings_are_not_aligned_again():
    aligner = RecordingAligner()
    late = [dict(w, start_s=0.9, end_s=1.0) for w in ({"word": x} for x in "one two three four".split())]
    assert await _cut_after(_frames(late), 0.55, aligner, before_cut=_aligned) == ""
    assert aligner.calls == []


async def test_the_sentence_still_being_synthesized_keeps_the_share_of_audio():
    aligner = RecordingAligner()
    assert await _cut_after(_frames(None)[:1], 0.55, aligner) == "one two"  # its end has not come
    assert aligner.calls == []


async def test_the_cut_does_not_wait_for_an_alignment_still_running(caplog):
    aligner = RecordingAligner(gated=True)

    async def started(proc: OutputProcessor) -> None:
        assert await asyncio.to_thread(aligner.started.wait, SAFETY_TIMEOUT_S)

    try:
        # The aligner is blocked in its thread for the whole cut: the share of audio stands in.
        assert await _cut_after(_frames(None), 0.55, aligner, before_cut=started) == "one two"
    finally:
        aligner.release()
    assert aligner.calls == [(SR, SR, "one two three four")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_reply_that_ends_drops_its_alignment_still_running(caplog):
    aligner = RecordingAligner(gated=True)
    clock = FakeClock()
    conversation = Conversation()
    proc = OutputProcessor(conversation, AgentSettings(), clock=clock, aligner=aligner)
    try:
        async with Harness(proc) as h:
            await h.send(LLMFullResponseStartFrame(turn_id=1))
            for f in _frames(None):
                await h.send(f)
            await h.send(LLMFullResponseEndFrame(turn_id=1, text="one two three four"))
            assert await asyncio.to_thread(aligner.started.wait, SAFETY_TIMEOUT_S)
            await clock.run_for(1.2)
            done = await h.wait_for(lambda f: isinstance(f, AssistantTurnFrame))
            await proc.alignments_done()  # nothing left to wait for: the reply is over
    finally:
        aligner.release()
    assert done.text == "one two three four" and not done.interrupted
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_aligner_that_fails_falls_back_to_the_share_of_audio(caplog):
    def broken(audio, sample_rate, text):
        raise OSError("libespeak-ng.so: cannot open shared object file")

    with caplog.at_level(logging.WARNING, logger="echoforge.agent"):
        assert await _cut_after(_frames(None), 0.55, broken, before_cut=_aligned) == "one two"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "libespeak-ng.so" in warnings[0].getMessage()


@pytest.mark.skipif(not espeak_events.available(), reason="libespeak-ng not installed")
def test_the_default_aligner_times_piper_speech_for_the_cut(piper):
    from echoforge.agent.config import AgentSettings
    from echoforge.agent.pipeline import word_aligner
    from echoforge.analysis.alignment import align_words
    from echoforge.captions import words_heard
    from echoforge.engines import SynthesisRequest

    assert word_aligner(EspeakEngine()) is None  # espeak-ng reports its own word events
    assert word_aligner(piper, AgentSettings(barge_in_alignment=False)) is None  # turned off
    assert word_aligner(piper, AgentSettings()) is not None  # on by default
    aligner = word_aligner(piper)
    text = "The quick brown fox jumps over the lazy dog."
    audio = piper.synthesize(SynthesisRequest(text=text))
    timed = align_words(text, aligner(audio, piper.sample_rate, text), audio.size / piper.sample_rate)
    assert [w["word"] for w in timed] == text.split()
    assert all(a["start_s"] <= b["start_s"] for a, b in zip(timed, timed[1:], strict=False))
    half = audio.size / piper.sample_rate / 2
    heard = words_heard(timed, half)
    assert 2 <= len(heard) <= 7  # about half the sentence, by when its words were spoken


@pytest.mark.skipif(not espeak_events.available(), reason="libespeak-ng not installed")
async def test_a_piper_sentence_is_cut_by_its_aligned_word_timings(piper):
    from echoforge.agent.pipeline import word_aligner
    from echoforge.analysis.alignment import align_words
    from echoforge.captions import words_heard
    from echoforge.engines import SynthesisRequest

    text = "The quick brown fox jumps over the lazy dog."
    audio = piper.synthesize(SynthesisRequest(text=text))
    frames = [
        TTSAudioRawFrame(audio=audio, sample_rate=piper.sample_rate, text=text, turn_id=1, index=0),
        TTSAudioRawFrame(
            audio=np.zeros(0, np.float32), sample_rate=piper.sample_rate, text=text, turn_id=1, index=0, last=True
        ),
    ]
    aligner = word_aligner(piper)
    half = round(audio.size / piper.sample_rate / 2, 2)  # the fake clock moves in 10 ms ticks
    heard = await _cut_after(frames, half, aligner, before_cut=_aligned)
    # The words whose middle had played by then, as the aligner places them (Piper's noise is off:
    # the same audio, the same timings).
    timed = align_words(text, aligner(audio, piper.sample_rate, text), audio.size / piper.sample_rate)
    assert heard.split() == [w["word"] for w in words_heard(timed, half)]
    assert 2 <= len(heard.split()) <= 7 and text.startswith(heard)


@pytest.mark.skipif(not espeak_events.available(), reason="libespeak-ng not installed")
async def test_the_tts_stage_passes_espeak_word_timings_on_the_sentence_end():
    engine = EspeakEngine()
    proc = TTSProcessor(engine, Conversation(), AgentSettings())
    async with Harness(proc) as h:
        await h.send(TTSTextFrame(text="Hello there, my friend.", turn_id=2, index=0))
        last = await h.wait_for(lambda f: isinstance(f, TTSAudioRawFrame) and f.last)
    audio_s = sum(f.audio.size for f in h.down if isinstance(f, TTSAudioRawFrame)) / engine.sample_rate
    assert [w["word"] for w in last.words] == ["Hello", "there,", "my", "friend."]
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(last.words, last.words[1:], strict=False))
    assert last.words[-1]["end_s"] <= audio_s + 1e-3
