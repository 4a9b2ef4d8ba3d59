"""Each agent stage on its own, between fake neighbours (``run_pipeline``), with fake models.

No real model loads here and no result depends on the machine's speed: the LLM and TTS fakes
move when the test lets them, the output's clock is a fake one.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from echoforge.agent.config import AgentSettings
from echoforge.agent.frames import (
    AssistantTurnFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMStopFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    RetrievalFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserAudioFrame,
    UserPauseAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from echoforge.agent.llm import DONT_KNOW
from echoforge.agent.pipeline import (
    Conversation,
    LLMProcessor,
    OutputProcessor,
    SentenceProcessor,
    STTProcessor,
    TTSProcessor,
    Turn,
    VADProcessor,
)
from echoforge.agent.testing import (
    UP,
    FakeClock,
    FakeLLM,
    FakeSTT,
    FakeTTS,
    FakeVAD,
    Harness,
    fake_knowledge_base,
    run_pipeline,
    silence,
    tone,
)
from echoforge.agent.vad import TurnDetector, VADParams
from echoforge.engines.base import Segment
from echoforge.text import audio_budget_ms


def settings(**kw) -> AgentSettings:
    return AgentSettings(use_analysis=False, report_memory=False, **kw)


def texts(frames, kind) -> list[str]:
    return [f.text for f in frames if isinstance(f, kind)]


def of(frames, kind) -> list:
    return [f for f in frames if isinstance(f, kind)]


# --- VAD --------------------------------------------------------------------------------------------


def detector(**kw) -> TurnDetector:
    return TurnDetector(VADParams(**{"silence_ms": 300, "min_speech_ms": 96, **kw}), FakeVAD())


async def test_vad_stage_turns_speech_into_start_stop_and_the_turn_audio():
    audio = np.concatenate([silence(0.3), tone(0.6), silence(0.6)])
    down, up = await run_pipeline(
        VADProcessor(detector()),
        [InputAudioRawFrame(audio=audio)],
        [UserStartedSpeakingFrame, InterruptionFrame, UserStoppedSpeakingFrame, UserAudioFrame],
        [],
    )
    assert not down[0].during_bot_speech and down[1].reason == "user"
    turn = down[3].audio
    # The whole tone, with the pre-roll before it and ~200 ms of the trailing silence kept.
    assert 0.6 <= turn.size / 16_000 <= 0.6 + 0.3 + 0.25
    assert np.count_nonzero(np.abs(turn) > 0.1) > 0.5 * 0.6 * 16_000


async def test_vad_stage_pause_event_and_resampling():
    audio = np.concatenate([tone(0.5, sample_rate=48_000), silence(0.6, 48_000)])
    down, _ = await run_pipeline(
        VADProcessor(detector(partial_ms=100)),
        [InputAudioRawFrame(audio=audio, sample_rate=48_000)],
        [UserStartedSpeakingFrame, InterruptionFrame, UserPauseAudioFrame, UserStoppedSpeakingFrame, UserAudioFrame],
    )
    pause, final = down[2].audio, down[4].audio
    assert np.array_equal(final[: pause.size], pause)  # what was transcribed at the pause stays valid


async def test_vad_stage_barge_in_needs_more_than_the_echo():
    det = detector(interrupt_min_speech_ms=160)
    vad = VADProcessor(det)
    async with Harness(vad) as h:
        await h.send(BotStartedSpeakingFrame(), UP)  # from the output: the agent is talking
        assert det.bot_speaking and h.up and isinstance(h.up[0], BotStartedSpeakingFrame)
        for _ in range(20):  # the agent's voice at 0.3 plays; its echo comes back at 0.06
            det.note_playback(tone(0.04, 0.3))
            await h.send(InputAudioRawFrame(audio=tone(0.04, 0.06)))
        assert not of(h.down, UserStartedSpeakingFrame)
        for _ in range(10):  # a person talks over it
            det.note_playback(tone(0.04, 0.3))
            await h.send(InputAudioRawFrame(audio=tone(0.04, 0.5)))
        started = of(h.down, UserStartedSpeakingFrame)
        assert len(started) == 1 and started[0].during_bot_speech
        assert of(h.down, InterruptionFrame)[0].reason == "barge-in"
        await h.send(BotStoppedSpeakingFrame(), UP)
        assert not det.bot_speaking


async def test_vad_stage_paused_drops_audio():
    vad = VADProcessor(detector())
    vad.paused = True
    await run_pipeline(vad, [InputAudioRawFrame(audio=np.concatenate([tone(0.5), silence(0.5)]))], [])


# --- STT --------------------------------------------------------------------------------------------


async def test_stt_stage_transcribes_at_the_pause_and_only_the_rest_at_the_end():
    stt = FakeSTT(["what port", "does the server use"])
    first = np.concatenate([tone(0.5), silence(0.2)])
    turn = np.concatenate([first, tone(0.4), silence(0.2)])
    down, _ = await run_pipeline(
        STTProcessor(stt),
        [UserStartedSpeakingFrame(), UserPauseAudioFrame(audio=first), UserAudioFrame(audio=turn)],
        [UserStartedSpeakingFrame, InterimTranscriptionFrame, TranscriptionFrame],
    )
    assert down[1].text == "what port"
    final = down[2]
    assert final.text == "what port does the server use" and stt.calls == 2
    # Word times of the second piece count from the start of the turn.
    assert [w for w, _, _ in final.words] == final.text.split()
    assert final.words[2][1] >= first.size / 16_000 - 1e-6
    assert final.audio is turn


async def test_stt_stage_silent_turn_gives_an_empty_transcript():
    down, _ = await run_pipeline(
        STTProcessor(FakeSTT(["never"])), [UserAudioFrame(audio=silence(0.5))], [TranscriptionFrame]
    )
    assert down[0].text == ""


# --- LLM --------------------------------------------------------------------------------------------

DOCS = {
    "server.md": "# The EchoForge server\n\nThe EchoForge server listens on port 8000 by default. Start it with make serve.\n"
}


@pytest.fixture
def kb(tmp_path):
    return fake_knowledge_base(tmp_path / "kb", tmp_path / "index", DOCS)


async def test_llm_stage_streams_a_reply_for_a_request():
    llm = FakeLLM("Once upon a time, a fox.")
    conversation = Conversation()
    down, _ = await run_pipeline(
        LLMProcessor(llm, conversation, settings()),
        [TranscriptionFrame(text="Tell me a story")],
        [TranscriptionFrame, RetrievalFrame, LLMFullResponseStartFrame, *[LLMTextFrame] * 6, LLMFullResponseEndFrame],
    )
    assert down[1].fallback and down[-1].text == "Once upon a time, a fox."
    assert "".join(texts(down, LLMTextFrame)) == "Once upon a time, a fox."
    assert down[2].question == "Tell me a story" and not down[2].strict
    assert [(t.role, t.text) for t in conversation.turns] == [("user", "Tell me a story")]
    assert llm.calls and llm.calls[0][-1]["content"].endswith("Tell me a story")


@pytest.mark.parametrize(
    "said",
    ["Hello there", "Hello, how are you?", "Hi!", "Good morning", "Thanks, goodbye.", "Thank you so much",
     "What can you do?", "Who are you?", "What's your name?", "Bye!", "how's it going"],
)  # fmt: skip
async def test_llm_stage_small_talk_is_answered_by_the_persona(said):
    llm = FakeLLM("Hello! How are you?")
    down, _ = await run_pipeline(
        LLMProcessor(llm, Conversation(), settings()),
        [TranscriptionFrame(text=said)],
        [TranscriptionFrame, RetrievalFrame, LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame],
    )
    reply = down[3].text
    assert reply != DONT_KNOW and "notes" not in reply.lower() or "what can you do" in said.lower()
    assert reply.lower().rstrip("!?.") != said.lower().rstrip("!?.")  # not an echo
    assert len(reply.split()) <= 25 and not llm.calls
    assert not any(w in reply.lower() for w in ("confidence", "emotion", "excited", "(", "["))


async def test_llm_stage_fact_question_without_notes_is_declined_without_the_model():
    llm = FakeLLM("Lima, of course.")
    down, _ = await run_pipeline(
        LLMProcessor(llm, Conversation(), settings()),
        [TranscriptionFrame(text="What is the capital of Peru?")],
        [TranscriptionFrame, RetrievalFrame, LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame],
    )
    assert down[3].text == DONT_KNOW and not llm.calls


async def test_llm_stage_quotes_the_notes_with_the_embedded_model(kb):
    llm = FakeLLM("Something else entirely.", embedded=True)
    down, _ = await run_pipeline(
        LLMProcessor(llm, Conversation(), settings(), kb=kb),
        [TranscriptionFrame(text="What port does the server use?")],
        [TranscriptionFrame, RetrievalFrame, LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame],
    )
    retrieval, start = down[1], down[2]
    assert not retrieval.fallback and retrieval.passages[0].source == "server.md"
    assert start.strict and start.sources == ["server.md"] and "8000" in start.grounded_answer
    assert "8000" in down[3].text and not llm.calls
    assert start.verbatim  # decided before it is spoken: the sentence stage speaks its first words early


async def test_llm_stage_a_generated_reply_is_not_verbatim(kb):
    llm = FakeLLM("The server uses port 8000.", embedded=False)
    down, _ = await run_pipeline(
        LLMProcessor(llm, Conversation(), settings(), kb=kb),
        [TranscriptionFrame(text="What port does the server use?")],
    )
    start = next(f for f in down if isinstance(f, LLMFullResponseStartFrame))
    assert llm.calls and not start.verbatim  # the model's words are checked whole before they are spoken


async def test_llm_stage_stop_from_downstream_ends_generation():
    llm = FakeLLM("One two three four five six seven eight.", gated=True)
    proc = LLMProcessor(llm, Conversation(), settings())
    async with Harness(proc) as h:
        await h.send(TranscriptionFrame(text="Tell me a story"))
        llm.allow(2)
        await h.wait_for(lambda f: isinstance(f, LLMTextFrame), count=2)
        assert proc.generating
        await h.send(LLMStopFrame(turn_id=proc.turn_id, reason="length"), UP)
        end = await h.wait_for(lambda f: isinstance(f, LLMFullResponseEndFrame))
    assert end.text == "One two" and not end.cut and llm.stopped.is_set() and proc.cancelled == 0


async def test_llm_stage_interruption_cancels_generation():
    llm = FakeLLM("One two three four five six seven eight.", gated=True)
    proc = LLMProcessor(llm, Conversation(), settings())
    async with Harness(proc) as h:
        await h.send(TranscriptionFrame(text="Tell me a story"))
        llm.allow(1)
        await h.wait_for(lambda f: isinstance(f, LLMTextFrame))
        await h.send(InterruptionFrame(reason="barge-in"))
        assert proc.cancelled == 1 and not proc.generating
        assert isinstance(h.down[-1], InterruptionFrame) and not of(h.down, LLMFullResponseEndFrame)
    assert await _wait_event(llm.stopped)


async def _wait_event(event: threading.Event) -> bool:
    import asyncio

    return await asyncio.to_thread(event.wait, 30)


# --- sentences --------------------------------------------------------------------------------------


def reply_frames(text: str, turn_id: int = 1, **start) -> list:
    pieces = [LLMTextFrame(text=p, turn_id=turn_id) for p in text.split(" ")]
    for p in pieces[1:]:
        p.text = " " + p.text
    return [LLMFullResponseStartFrame(turn_id=turn_id, **start), *pieces, LLMFullResponseEndFrame(turn_id=turn_id, text=text)]


async def test_sentence_stage_short_first_piece_then_sentences_and_the_length_limit():
    down, up = await run_pipeline(
        SentenceProcessor(max_sentences=2),
        reply_frames("Hello there my friend, it is good to see you. How can I help today? This is too much."),
    )
    spoken = texts(down, TTSTextFrame)
    assert spoken == ["Hello there my friend,", "it is good to see you.", "How can I help today?"]
    assert [f.index for f in of(down, TTSTextFrame)] == [0, 1, 2]
    assert [(type(f), f.reason) for f in up] == [(LLMStopFrame, "length")]
    # Text frames still pass on (UIs show them), sentences are cut into the flow in order.
    assert isinstance(down[0], LLMFullResponseStartFrame) and isinstance(down[-1], LLMFullResponseEndFrame)


async def test_sentence_stage_replaces_an_ungrounded_number_with_the_notes():
    grounded = "The server listens on port 8000 by default."
    down, up = await run_pipeline(
        SentenceProcessor(),
        reply_frames("Port 9000 is used.", known=f"what port  {grounded}", strict=True, grounded_answer=grounded),
    )
    assert texts(down, TTSTextFrame) == [grounded]
    assert [f.reason for f in up] == ["ungrounded"]


async def test_sentence_stage_speaks_a_decided_reply_early_and_a_checked_one_whole():
    quote = "By default the server listens on 127.0.0.1 at port 8000, so the web studio opens there."
    notes = f"what port does it use  Server: {quote}"

    def whole(verbatim: bool) -> list:
        start = LLMFullResponseStartFrame(turn_id=1, known=notes, strict=True, grounded_answer=quote, verbatim=verbatim)
        return [start, LLMTextFrame(text=quote, turn_id=1), LLMFullResponseEndFrame(turn_id=1, text=quote)]

    # The notes' own sentence, decided before it is spoken: its first words go to the TTS at once.
    down, up = await run_pipeline(SentenceProcessor(), whole(verbatim=True))
    assert texts(down, TTSTextFrame) == ["By default the server", "listens on 127.0.0.1 at port 8000, so the web studio opens there."]
    assert not up
    # The same text as a model's answer is checked whole before any of it is spoken.
    down, _ = await run_pipeline(SentenceProcessor(), whole(verbatim=False))
    assert texts(down, TTSTextFrame) == [quote]


async def test_sentence_stage_drops_the_tail_of_a_cut_reply():
    frames = reply_frames("The first sentence is complete and whole. The second one is not")
    frames[-1].cut = True
    down, _ = await run_pipeline(SentenceProcessor(max_sentences=5), frames)
    assert " ".join(texts(down, TTSTextFrame)) == "The first sentence is complete and whole."


# --- TTS --------------------------------------------------------------------------------------------


async def test_tts_stage_speaks_each_sentence_with_the_conversation_as_context():
    engine = FakeTTS(seconds_per_word=0.25, chunk_s=0.2)
    conversation = Conversation()
    conversation.add(Turn("user", "hi", tone(0.5), 16_000))
    prompt = Segment(speaker=0, text="reference", audio=np.zeros(2400, np.float32))
    down, _ = await run_pipeline(
        TTSProcessor(
            engine, conversation, settings(voice="v1"), voice_prompt=lambda voice: prompt if voice == "v1" else None
        ),
        [TTSTextFrame(text="Hello there friend.", turn_id=3, index=0)],
        [TTSAudioRawFrame] * 5,
    )
    assert [f.last for f in down] == [False] * 4 + [True]
    assert sum(f.audio.size for f in down) == engine.audio_for("Hello there friend.").size
    assert all(f.turn_id == 3 and f.index == 0 and f.sample_rate == engine.sample_rate for f in down)
    request = engine.requests[0]
    assert request.voice == "v1" and request.context[0].pinned and request.context[1].text == "hi"
    assert request.context[1].audio.size == 12_000  # the user's 0.5 s, resampled to the engine's rate
    # Each sentence gets its own audio budget (as the server's requests do), not the 90-s default.
    assert request.max_audio_length_ms == audio_budget_ms("Hello there friend.") < 10_000


async def test_tts_stage_interruption_stops_the_engine():
    engine = FakeTTS(gated=True)
    proc = TTSProcessor(engine, Conversation(), settings())
    async with Harness(proc) as h:
        await h.send(TTSTextFrame(text="A long sentence to say.", turn_id=1))
        engine.allow(1)
        await h.wait_for(lambda f: isinstance(f, TTSAudioRawFrame))
        await h.send(InterruptionFrame())
        assert proc.cancelled == 1
        assert engine.requests[0].should_stop()  # the engine is told to stop (CSM drops the row)
        assert not [f for f in h.down if isinstance(f, TTSAudioRawFrame) and f.last]


# --- output -----------------------------------------------------------------------------------------


def reply_audio(turn_id: int, sentences: list[tuple[str, float]], sr: int = 24_000) -> list:
    frames = []
    for i, (text, seconds) in enumerate(sentences):
        frames.append(TTSAudioRawFrame(audio=tone(seconds, 0.2, sr), sample_rate=sr, text=text, turn_id=turn_id, index=i))
        frames.append(
            TTSAudioRawFrame(audio=np.zeros(0, np.float32), sample_rate=sr, text=text, turn_id=turn_id, index=i, last=True)
        )
    return frames


async def test_output_stage_plays_a_reply_and_commits_it():
    conversation = Conversation()
    s = settings()
    full = "Hello there. Bye now."
    down, up = await run_pipeline(
        OutputProcessor(conversation, s, clock=FakeClock(auto=True)),
        [
            LLMFullResponseStartFrame(turn_id=1, sources=["a.md"]),
            *reply_audio(1, [("Hello there.", 0.4), ("Bye now.", 0.2)]),
            LLMFullResponseEndFrame(turn_id=1, text=full),
        ],  # fmt: skip
        until=lambda f: isinstance(f, AssistantTurnFrame),
    )
    assert [type(f) for f in up] == [BotStartedSpeakingFrame, BotStoppedSpeakingFrame]
    audio = of(down, OutputAudioRawFrame)
    assert len(audio) == 15 and all(f.audio.size == 960 for f in audio)  # 0.6 s in 40 ms chunks
    final = of(down, AssistantTurnFrame)[0]
    assert final.text == full and not final.interrupted and final.sources == ["a.md"]
    assert down.index(final) > down.index(audio[-1])  # committed after its last chunk went out
    turn = conversation.turns[-1]
    assert turn.role == "assistant" and turn.text == full and turn.audio.size == 14_400


async def test_output_stage_keeps_only_what_was_heard_on_interruption():
    clock = FakeClock()
    conversation = Conversation()
    proc = OutputProcessor(conversation, settings(), clock=clock)
    async with Harness(proc) as h:
        await h.send(LLMFullResponseStartFrame(turn_id=1))
        for f in reply_audio(1, [("one two three four", 1.0), ("five six", 0.5)]):
            await h.send(f)
        await h.wait_for(lambda f: isinstance(f, BotStartedSpeakingFrame), UP)
        await h.drain()
        sent_before = len(of(h.down, OutputAudioRawFrame))
        assert sent_before * 0.04 <= settings().playback_lead_ms / 1000 + 0.08  # only the lead goes out ahead
        await clock.run_for(0.55)  # 0.55 s of the first sentence played
        await h.drain()
        assert len(of(h.down, OutputAudioRawFrame)) >= sent_before + 12
        await h.send(UserStartedSpeakingFrame(during_bot_speech=True))  # held from here on
        await h.drain()
        n_sent = len(of(h.down, OutputAudioRawFrame))
        await h.send(InterruptionFrame(reason="barge-in"))
        cut = await h.wait_for(lambda f: isinstance(f, AssistantTurnFrame))
        clock.advance(5.0)
        await h.drain()
    assert len(of(h.down, OutputAudioRawFrame)) == n_sent
    assert cut.interrupted and cut.text == "one two"  # 0.55 of 1.0 s heard: 2 of its 4 words
    assert isinstance(h.up[-1], BotStoppedSpeakingFrame) and h.up[-1].interrupted
    assert conversation.turns[-1].text == "one two" and conversation.turns[-1].interrupted
