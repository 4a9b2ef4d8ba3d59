"""Semantic end of turn (echoforge.agent.turn) inside the VAD state machine.

The state machine is driven by the fake VAD (a tone is speech, zeros are silence) and a fake turn
model that records what it was asked, so when the turn ends is decided by construction; one test
runs pipecat's real smart-turn v3.2 model on Piper speech.
"""

from __future__ import annotations

import numpy as np
import pytest

from echoforge.agent.config import TurnSettings
from echoforge.agent.frames import (
    InputAudioRawFrame,
    InterruptionFrame,
    UserAudioFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from echoforge.agent.pipeline import TurnLatency, VADProcessor
from echoforge.agent.testing import FakeTurnModel, FakeVAD, run_pipeline, tone
from echoforge.agent.testing import silence as quiet
from echoforge.agent.vad import WINDOW, TurnDetector, VADParams

WIN_MS = WINDOW * 1000 / 16_000  # 32 ms


def speech(ms: float) -> np.ndarray:
    return tone(ms / 1000)


def silence(ms: float) -> np.ndarray:
    return quiet(ms / 1000)


def run(det: TurnDetector, audio: np.ndarray):
    return [e for i in range(0, audio.size, 320) for e in det.push(audio[i : i + 320])]


def params(**kw) -> VADParams:
    base = dict(silence_ms=500, smart_turn=True, smart_turn_ms=200, incomplete_silence_ms=1200, partial_ms=0)
    return VADParams(**(base | kw))


def test_a_complete_turn_ends_at_the_first_pause():
    model = FakeTurnModel(0.9)
    det = TurnDetector(params(), FakeVAD(), turn_model=model)
    events = run(det, np.concatenate([speech(1000), silence(2000)]))
    assert [e.kind for e in events] == ["started", "stopped"]
    stop = events[-1]
    assert len(model.calls) == 1  # asked once, after 200 ms of silence, with the whole turn so far
    waited_ms = (stop.time_s - stop.speech_end_s) * 1000
    assert waited_ms == pytest.approx(7 * WIN_MS)  # ceil(200 / 32) windows, not 500 ms
    assert stop.turn_probability == pytest.approx(0.9)
    assert stop.speech_end_s == pytest.approx(1.0, abs=WIN_MS / 1000)


def test_an_unfinished_turn_waits_through_a_long_pause():
    model = FakeTurnModel(0.1)
    det = TurnDetector(params(), FakeVAD(), turn_model=model)
    # An 800 ms breath mid-sentence: the fixed 500 ms silence would have cut the user off here.
    events = run(det, np.concatenate([speech(800), silence(800), speech(600), silence(1000)]))
    assert [e.kind for e in events] == ["started"]
    assert len(model.calls) == 2  # each silence stretch judged afresh, on the whole turn so far
    assert model.calls[1] > model.calls[0]
    events = run(det, silence(400))  # 1,400 ms of silence after the second part: over 1,200 ms
    assert [e.kind for e in events] == ["stopped"] and len(model.calls) == 2
    stop = events[0]
    assert (stop.time_s - stop.speech_end_s) * 1000 >= 1200
    assert stop.audio.size / 16_000 >= 0.8 + 0.8 + 0.6  # one turn: both parts and the pause


def test_without_smart_turn_the_silence_alone_decides():
    model = FakeTurnModel(0.9)
    det = TurnDetector(params(smart_turn=False), FakeVAD(), turn_model=model)
    events = run(det, np.concatenate([speech(1000), silence(2000)]))
    assert [e.kind for e in events] == ["started", "stopped"] and model.calls == []
    stop = events[-1]
    assert (stop.time_s - stop.speech_end_s) * 1000 == pytest.approx(16 * WIN_MS)  # ceil(500 / 32)
    assert stop.turn_probability is None


def test_the_pause_event_for_early_transcription_comes_before_the_models_verdict():
    det = TurnDetector(params(partial_ms=200), FakeVAD(), turn_model=FakeTurnModel(0.2))
    events = run(det, np.concatenate([speech(1000), silence(1500)]))
    assert [e.kind for e in events] == ["started", "pause", "stopped"]
    # A complete turn: the pause event first (the recogniser starts on it), the model one window
    # later, and the turn ends right then.
    det = TurnDetector(params(partial_ms=200), FakeVAD(), turn_model=FakeTurnModel(0.8))
    events = run(det, np.concatenate([speech(1000), silence(1500)]))
    assert [e.kind for e in events] == ["started", "pause", "stopped"]
    assert (events[2].time_s - events[1].time_s) * 1000 == pytest.approx(WIN_MS)


def test_settings_carry_the_smart_turn_fields():
    p = TurnSettings(smart_turn=True, smart_turn_ms=160, incomplete_silence_ms=900).vad_params(200)
    assert (p.smart_turn, p.smart_turn_ms, p.incomplete_silence_ms) == (True, 160, 900)
    with pytest.raises(ValueError, match="smart_turn_ms"):
        TurnSettings(smart_turn_ms=600, silence_ms=500)


async def test_vad_stage_reports_how_long_after_the_speech_it_decided():
    det = TurnDetector(params(), FakeVAD(), turn_model=FakeTurnModel(0.9))
    down, _ = await run_pipeline(
        VADProcessor(det),
        [InputAudioRawFrame(audio=np.concatenate([speech(800), silence(1000)]))],
        [UserStartedSpeakingFrame, InterruptionFrame, UserStoppedSpeakingFrame, UserAudioFrame],
    )
    assert down[2].silence_s == pytest.approx(7 * WIN_MS / 1000)


def test_voice_to_voice_counts_from_the_end_of_speech():
    lat = TurnLatency(vad_end=10.5, speech_end=10.0, transcript=10.7, first_audio=11.2).as_dict()
    assert lat["vad_wait_s"] == pytest.approx(0.5) and lat["stt_s"] == pytest.approx(0.2)
    assert lat["voice_to_voice_s"] == pytest.approx(1.2)  # what the user waited after their last word


@pytest.mark.integration
def test_real_model_tells_a_finished_question_from_a_trailing_one(say):
    from echoforge.agent.turn import smart_turn_model

    model = smart_turn_model()
    pad = silence(200)
    finished = [
        model(np.concatenate([say(t), pad]))
        for t in ("What time does the library open on Saturday?", "Hello, how are you?")
    ]
    trailing = [model(np.concatenate([say(t), pad])) for t in ("So I was wondering if", "And then we could")]
    assert min(finished) > 0.5 > max(trailing)
