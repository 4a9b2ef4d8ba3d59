"""Silero VAD + turn state machine on real speech (Piper) and synthetic noise."""

from __future__ import annotations

import numpy as np
import pytest

from echoforge.agent.vad import SileroVAD, TurnDetector, VADParams

pytestmark = pytest.mark.integration  # real Silero VAD on Piper speech


@pytest.fixture(scope="module")
def silero():
    return SileroVAD()


def push_chunks(det: TurnDetector, audio: np.ndarray, step: int = 320, playback: np.ndarray | None = None):
    """Feed ``audio`` in 20 ms chunks; when ``playback`` is given, report it as playing alongside."""
    events = []
    for i in range(0, audio.size, step):
        if playback is not None:
            det.note_playback(playback[i : i + step])
        events += det.push(audio[i : i + step])
    return events


def test_silero_scores_speech_high_and_silence_low(silero, say):
    speech = say("What port does the server use?")
    silero.reset()
    probs = [silero(speech[i : i + 512]) for i in range(0, speech.size - 512, 512)]
    silero.reset()
    quiet = [silero(np.zeros(512, np.float32)) for _ in range(20)]
    assert max(probs) > 0.9 and np.mean(probs) > 0.5
    assert max(quiet) < 0.2


def test_one_turn_with_bounds(silero, say):
    speech = say("What port does the server use?")
    det = TurnDetector(VADParams(silence_ms=500), silero)
    audio = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)])
    events = push_chunks(det, audio)
    assert [e.kind for e in events] == ["started", "stopped"]
    start, stop = events
    loud = np.flatnonzero(np.abs(speech) > 0.02)  # Piper pads its output with silence
    speech_start = (8000 + loud[0]) / 16000
    assert speech_start + 0.2 <= start.time_s <= speech_start + 0.6  # confirmed after min_speech_ms (250)
    speech_end = (8000 + loud[-1]) / 16000
    assert speech_end + 0.35 <= stop.time_s <= speech_end + 0.8  # 500 ms of silence ends the turn
    # The turn audio holds the whole utterance (pre-roll included), not the long silence.
    assert speech.size / 16000 - 0.2 <= stop.audio.size / 16000 <= speech.size / 16000 + 0.7


def test_two_turns_and_silence_length_setting(silero, say):
    speech = say("Hello there.")
    gap = np.zeros(int(16000 * 0.4), np.float32)
    audio = np.concatenate([speech, gap, speech, np.zeros(16000, np.float32)])
    # A 400 ms pause ends the turn with silence_ms=300 but not with silence_ms=800.
    short = push_chunks(TurnDetector(VADParams(silence_ms=300), silero), audio)
    silero.reset()
    long = push_chunks(TurnDetector(VADParams(silence_ms=800), silero), audio)
    assert [e.kind for e in short].count("stopped") == 2
    assert [e.kind for e in long].count("stopped") == 1


def test_noise_bursts_and_clicks_are_not_speech(silero):
    rng = np.random.default_rng(0)
    quiet = np.zeros(8000, np.float32)
    burst = rng.normal(0, 0.3, int(16000 * 0.15)).astype(np.float32)  # 150 ms of loud noise
    click = np.zeros(1600, np.float32)
    click[::400] = 0.9
    audio = np.concatenate([quiet, burst, quiet, click, quiet, burst, quiet])
    assert push_chunks(TurnDetector(VADParams(), silero), audio) == []


def test_speech_shorter_than_min_speech_is_ignored(silero, say):
    speech = say("What port does the server use?")
    first = int(np.flatnonzero(np.abs(speech) > 0.02)[0])
    blip = speech[first : first + int(0.35 * 16000)]  # the first ~350 ms: "What po-"
    audio = np.concatenate([np.zeros(8000, np.float32), blip, np.zeros(16000, np.float32)])
    assert push_chunks(TurnDetector(VADParams(min_speech_ms=500), silero), audio) == []
    silero.reset()
    assert [e.kind for e in push_chunks(TurnDetector(VADParams(min_speech_ms=96), silero), audio)] == ["started", "stopped"]


def test_guard_ignores_attenuated_echo_but_not_the_user(silero, say):
    bot = say("EchoForge turns text into natural speech and runs on your own machine.")
    user = say("Wait, stop please, I have a question.")
    det = TurnDetector(VADParams(), silero)
    det.set_bot_speaking(True)
    echo = 0.25 * bot  # the agent's own voice coming back through the mic, -12 dB
    assert push_chunks(det, echo, playback=bot) == []
    # The user talking over the agent (echo still present) is a barge-in.
    n = min(user.size, bot.size)
    mixed = user[:n] + 0.25 * bot[:n]
    events = push_chunks(det, mixed, playback=bot[:n])
    assert events and events[0].kind == "started" and events[0].during_bot_speech
    # Without the guard the same echo would have started a turn: the guard is what stops it.
    silero.reset()
    det2 = TurnDetector(VADParams(), silero)
    assert [e.kind for e in push_chunks(det2, np.concatenate([echo, np.zeros(16000, np.float32)]))][:1] == ["started"]
