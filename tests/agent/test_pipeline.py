"""The whole agent on real models: a spoken question in, a spoken answer out; barge-in; self-echo; noise."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from echoforge.agent.frames import (
    AssistantTurnFrame,
    BotStartedSpeakingFrame,
    InterruptionFrame,
    LLMTextFrame,
    MetricsFrame,
    OutputAudioFrame,
    RetrievalFrame,
    StateFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
)
from echoforge.audio import resample


def of(frames, kind):
    return [f for f in frames if isinstance(f, kind)]


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
    audio = of(frames, OutputAudioFrame)
    assert len(audio) > 10 and all(f.sample_rate == agent.engine.sample_rate for f in audio)
    seconds = sum(f.audio.size for f in audio) / agent.engine.sample_rate
    assert seconds > 1.0 and max(float(np.abs(f.audio).max()) for f in audio) > 0.1
    states = [f.state for f in of(frames, StateFrame)]
    assert states[:3] == ["listening", "thinking", "speaking"] and states[-1] == "listening"
    latency = of(frames, MetricsFrame)[0].latency
    assert all(latency[k] is not None and latency[k] >= 0 for k in ("stt_s", "rag_s", "llm_first_token_s", "tts_first_audio_s"))
    assert latency["voice_to_voice_s"] >= latency["first_token_at_s"] >= latency["transcript_at_s"]
    # History: the user's words and the full (uninterrupted) reply, with the reply's audio for TTS context.
    user, assistant = agent.conversation.turns
    assert user.role == "user" and user.text == of(frames, TranscriptionFrame)[0].text
    final = of(frames, AssistantTurnFrame)[0]
    assert not final.interrupted and assistant.text == final.text and assistant.text.split()[:3] == reply.split()[:3]
    ctx = agent.conversation.tts_context(4, agent.engine.sample_rate)
    assert [s.speaker for s in ctx] == [1, 0] and ctx[1].audio.size == sum(f.audio.size for f in audio)


async def test_barge_in_stops_audio_and_cancels_generation(make_agent, say, helpers):
    # A question with nothing in the KB and room for a long reply: the LLM is still writing
    # while the first sentence plays.
    agent = make_agent(llm_max_tokens=120, reply_max_sentences=10)
    await agent.start()
    try:
        await helpers.feed(agent, helpers.with_silence(say("Tell me a long story about a dragon.")))
        frames = await helpers.collect_until(agent, lambda f: isinstance(f, BotStartedSpeakingFrame))
        assert of(frames, RetrievalFrame)[0].fallback  # nothing relevant: the light persona answers
        # Let a few chunks play, then talk over the agent at real-time pace.
        played = [0]

        def fifth_chunk(f) -> bool:
            played[0] += isinstance(f, OutputAudioFrame)
            return played[0] >= 5

        frames += await helpers.collect_until(agent, fifth_chunk)
        assert agent.llm.generating
        # A live mic streams all the time: 0.5 s of room silence (the VAD learns the echo level
        # from it: none here), then the user talks over the agent.
        interrupt_speech = helpers.with_silence(say("Stop talking please, I want to ask something else."), before_s=0.5, after_s=0.0)
        t_feed = time.monotonic() + 0.5
        feeder = asyncio.create_task(helpers.feed(agent, interrupt_speech, realtime=True))
        after = await helpers.collect_until(agent, lambda f: isinstance(f, AssistantTurnFrame), timeout=30)
        await feeder
    finally:
        await agent.stop()
    barge = [f for f in after if isinstance(f, UserStartedSpeakingFrame)]
    assert barge and barge[0].during_bot_speech
    i_barge = after.index(barge[0])
    # Audio stops at once: no chunk leaves after the barge-in. Between the user's first sound and
    # the barge-in only the time needed to confirm speech passes (Piper's leading silence, then
    # interrupt_min_speech_ms = 250 ms of confident speech): at most 20 chunks of 40 ms (0.8 s).
    assert not of(after[i_barge:], OutputAudioFrame)
    sent_meanwhile = [f for f in of(frames + after, OutputAudioFrame) if t_feed <= f.created <= barge[0].created]
    assert len(sent_meanwhile) <= 20
    assert of(after, InterruptionFrame)
    # Generation was cancelled, not left running.
    assert agent.llm.cancelled == 1 and not agent.llm.generating
    # History keeps only what was heard: a strict prefix of what had been written.
    cut = of(after, AssistantTurnFrame)[0]
    written = "".join(f.text for f in of(frames + after, LLMTextFrame))
    assert cut.interrupted and cut.text
    assert written.split()[: len(cut.text.split())] == cut.text.split()
    assert len(cut.text.split()) < len(written.split())
    last = agent.conversation.turns[-1]
    assert last.role == "assistant" and last.interrupted and last.text == cut.text


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
            if isinstance(frame, OutputAudioFrame):
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
