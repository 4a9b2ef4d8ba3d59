"""The whole agent: a spoken question in, a spoken answer out (real models); barge-in (fakes the
test drives, so the LLM is still writing when the user talks, on any machine); self-echo; noise."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from echoforge.agent.config import AgentSettings
from echoforge.agent.frames import (
    AssistantTurnFrame,
    BotStartedSpeakingFrame,
    InterruptionFrame,
    LLMTextFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    RetrievalFrame,
    StateFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
)
from echoforge.agent.pipeline import VoiceAgent, vad_params
from echoforge.agent.testing import (
    SAFETY_TIMEOUT_S,
    FakeClock,
    FakeLLM,
    FakeSTT,
    FakeTTS,
    FakeTurnModel,
    FakeVAD,
    silence,
    tone,
)
from echoforge.agent.vad import TurnDetector
from echoforge.audio import resample


def of(frames, kind):
    return [f for f in frames if isinstance(f, kind)]


@pytest.mark.integration
async def test_spoken_question_gets_a_spoken_answer_from_the_kb(make_agent, say, helpers):
    agent = make_agent()
    await agent.start()
    try:
        await helpers.feed(agent, helpers.with_silence(say("What port does the server use?")))
        frames = await helpers.collect_until(agent, helpers.is_reply_end)
    finally:
        await agent.stop()
    transcript = of(frames, TranscriptionFrame)[0].text.lower()
    assert "port" in transcript and "server" in transcript
    retrieval = of(frames, RetrievalFrame)[0]
    assert not retrieval.fallback and retrieval.passages[0].source == "server.md"
    reply = "".join(f.text for f in of(frames, LLMTextFrame))
    assert reply.strip()
    audio = of(frames, OutputAudioRawFrame)
    assert len(audio) > 10 and all(f.sample_rate == agent.engine.sample_rate for f in audio)
    seconds = sum(f.audio.size for f in audio) / agent.engine.sample_rate
    assert seconds > 1.0 and max(float(np.abs(f.audio).max()) for f in audio) > 0.1
    states = [f.state for f in of(frames, StateFrame)]
    assert states[:3] == ["listening", "thinking", "speaking"] and states[-1] == "listening"
    latency = of(frames, MetricsFrame)[0].latency
    assert all(
        latency[k] is not None and latency[k] >= 0 for k in ("stt_s", "rag_s", "llm_first_token_s", "tts_first_audio_s")
    )
    assert latency["voice_to_voice_s"] >= latency["first_token_at_s"] >= latency["transcript_at_s"]
    # History: the user's words and the full (uninterrupted) reply, with the reply's audio for TTS context.
    user, assistant = agent.conversation.turns
    assert user.role == "user" and user.text == of(frames, TranscriptionFrame)[0].text
    final = of(frames, AssistantTurnFrame)[0]
    assert not final.interrupted and assistant.text == final.text and assistant.text.split()[:3] == reply.split()[:3]
    ctx = agent.conversation.tts_context(4, agent.engine.sample_rate)
    assert [s.speaker for s in ctx] == [1, 0] and ctx[1].audio.size == sum(f.audio.size for f in audio)


async def _events_until(agent, predicate) -> list:
    """Events until ``predicate(frame)`` (included); the timeout only guards against a hang."""
    frames = []
    while not frames or not predicate(frames[-1]):
        frames.append(await agent.next_event(SAFETY_TIMEOUT_S))
    return frames


async def _feed_in_step(agent, clock, audio: np.ndarray, chunk_s: float = 0.02) -> None:
    """Push 16 kHz audio in 20 ms chunks, moving the fake clock by as much: a live mic, in step."""
    step = int(16_000 * chunk_s)
    for i in range(0, audio.size, step):
        await agent.push_audio(audio[i : i + step], 16_000)
        await clock.run_for(chunk_s, step=chunk_s)


async def test_barge_in_stops_audio_and_cancels_generation():
    # Fake models driven by the test: the LLM writes only the tokens the test allows, so it is
    # still generating when the user talks over the agent, on any machine; the output's clock
    # moves only with the audio the test feeds.
    story = "Once upon a time a dragon lived on a hill. It guarded gold and slept all day long. One day a knight came."
    llm = FakeLLM(story, gated=True)
    clock = FakeClock()
    cfg = AgentSettings(use_analysis=False, report_memory=False, llm_max_tokens=120, reply_max_sentences=10)
    agent = VoiceAgent(
        FakeTTS(seconds_per_word=0.25),
        cfg,
        FakeSTT(["Tell me a long story about a dragon.", "Stop talking please."]),
        llm,
        vad=TurnDetector(vad_params(cfg), FakeVAD(), turn_model=FakeTurnModel(1.0)),  # a tone is a finished turn
        clock=clock,
    )
    await agent.start()
    try:
        await _feed_in_step(agent, clock, np.concatenate([silence(0.3), tone(1.2), silence(0.8)]))
        llm.allow(12)  # the first sentence and two words of the second; the rest is held back
        frames = await _events_until(agent, lambda f: isinstance(f, BotStartedSpeakingFrame))
        assert of(frames, RetrievalFrame)[0].fallback  # nothing relevant: the light persona answers
        # Before time moves on, everything released so far is in the output's buffer (the LLM and
        # TTS fakes run in threads: wait for what they did, not for how long they took).
        await _until(lambda: len(of(frames.__iadd__(drain(agent)), LLMTextFrame)) == 12)
        await _until(lambda: agent.output.spoken_so_far() == {0: True})  # "Once upon … on a hill."
        await clock.run_for(0.4)  # a few chunks play
        frames += drain(agent)
        assert agent.llm.generating and llm.yielded == 12 and not llm.finished.is_set()
        n_before = len(of(frames, OutputAudioRawFrame))
        assert n_before >= 10
        # A live mic streams all the time: 0.5 s of room silence, then the user talks over the agent.
        await _feed_in_step(agent, clock, silence(0.5))
        frames += drain(agent)
        t_speech = clock.now()
        await _feed_in_step(agent, clock, tone(0.6, 0.5))
        after = drain(agent)
        if not of(after, AssistantTurnFrame):
            after += await _events_until(agent, lambda f: isinstance(f, AssistantTurnFrame))
        assert await asyncio.to_thread(llm.stopped.wait, SAFETY_TIMEOUT_S)  # the model saw the stop
    finally:
        await agent.stop()
    barge = [f for f in after if isinstance(f, UserStartedSpeakingFrame)]
    assert barge and barge[0].during_bot_speech
    i_barge = after.index(barge[0])
    # Audio stops at once: no chunk leaves after the barge-in. Before it, only the time needed to
    # confirm speech passes (interrupt_min_speech_ms = 250 ms): a handful of 40 ms chunks.
    assert not of(after[i_barge:], OutputAudioRawFrame)
    sent_meanwhile = of(after[:i_barge], OutputAudioRawFrame)
    assert 1 <= len(sent_meanwhile) <= (cfg.turn.interrupt_min_speech_ms + 100) // cfg.output_chunk_ms
    assert of(after, InterruptionFrame) and t_speech < clock.now()
    # Generation was cancelled, not left running.
    assert agent.llm.cancelled == 1 and not agent.llm.generating and not llm.finished.is_set()
    # History keeps only what was heard: a strict prefix of what had been written.
    cut = of(after, AssistantTurnFrame)[0]
    written = "".join(f.text for f in of(frames + after, LLMTextFrame))
    assert cut.interrupted and cut.text
    assert written.split()[: len(cut.text.split())] == cut.text.split()
    assert len(cut.text.split()) < len(written.split())
    last = agent.conversation.turns[-1]
    assert last.role == "assistant" and last.interrupted and last.text == cut.text


async def _until(condition) -> None:
    """Wait until ``condition()`` holds (the timeout only guards against a hang)."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - the fakes' threads give no event to wait on
            await asyncio.sleep(0.002)

    await asyncio.wait_for(poll(), SAFETY_TIMEOUT_S)


def drain(agent) -> list:
    """The events already out (no waiting)."""
    out = []
    while (frame := agent.next_event_nowait()) is not None:
        out.append(frame)
    return out


@pytest.mark.integration
async def test_own_echo_and_noise_do_not_interrupt(make_agent, say, helpers):
    agent = make_agent(llm_max_tokens=40)
    await agent.start()
    rng = np.random.default_rng(1)
    echoed = 0
    try:
        await helpers.feed(agent, helpers.with_silence(say("What port does the server use?")))
        await helpers.collect_until(agent, lambda f: isinstance(f, BotStartedSpeakingFrame))
        frames = []
        noise_at = 10
        while True:
            frame = await agent.next_event(60)
            frames.append(frame)
            if isinstance(frame, OutputAudioRawFrame):
                # The agent's own voice comes back through the "room" at -12 dB…
                echo = 0.25 * resample(frame.audio, frame.sample_rate, 16_000)
                echoed += 1
                if echoed in (noise_at, noise_at + 1, noise_at + 2):  # …plus a loud 120 ms noise burst (a knock)
                    echo = echo + rng.normal(0, 0.3, echo.size).astype(np.float32)
                await agent.push_audio(echo, 16_000)
            if isinstance(frame, AssistantTurnFrame):
                break
    finally:
        await agent.stop()
    assert echoed > noise_at + 5, (echoed, of(frames, AssistantTurnFrame))
    assert not of(frames, UserStartedSpeakingFrame) and not of(frames, InterruptionFrame)
    final = of(frames, AssistantTurnFrame)[0]
    assert not final.interrupted and agent.llm.cancelled == 0
