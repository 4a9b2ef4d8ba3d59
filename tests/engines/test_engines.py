"""Engine registry and the fallback engines: real speech, transcribed back by real Whisper."""

from __future__ import annotations

import numpy as np
import pytest

from echoforge.config import load_settings
from echoforge.engines import (
    EngineError,
    EngineUnavailable,
    SynthesisRequest,
    TTSEngine,
    create_engine,
    register_engine,
)
from echoforge.eval.wer import wer

SENTENCES = [
    "I would like a cup of coffee, please.",
    "Thank you for your patience.",
    "We will meet at the station at noon.",
    "Please call me back before five o'clock tomorrow.",
]
# Whisper tiny.en against each engine's speech. Piper (the default fallback) must meet the
# 20% bar; espeak-ng's formant voice is the last resort and tiny.en mishears it more often.
MAX_WER = {"piper": 0.2, "espeak": 0.35}


def test_request_validation():
    with pytest.raises(ValueError, match="text"):
        SynthesisRequest(text="   ")
    with pytest.raises(ValueError, match="speed"):
        SynthesisRequest(text="hi", speed=9)
    with pytest.raises(ValueError, match="topk"):
        SynthesisRequest(text="hi", topk=0)


def test_unknown_engine_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="unknown engine 'nope'"):
        create_engine(load_settings(data_dir=tmp_path), "nope")


def _missing_engine(settings):
    raise EngineUnavailable("weights not here")


def test_auto_falls_back_loudly_when_csm_is_missing(tmp_path, caplog, monkeypatch):
    import echoforge.engines as engines

    register_engine("missing", f"{__name__}:_missing_engine")
    monkeypatch.setattr(engines, "AUTO_ORDER", ("missing", "piper", "espeak"))
    with caplog.at_level("WARNING", logger="echoforge.engines"):
        eng = create_engine(load_settings(data_dir=tmp_path))
    assert eng.name == "piper" and eng.is_fallback
    assert "FALLBACK" in caplog.text and "weights not here" in caplog.text


def test_auto_without_csm_weights_uses_a_labelled_fallback(tmp_path):
    eng = create_engine(load_settings(data_dir=tmp_path, csm={"model": str(tmp_path / "no-such-model")}))
    info = eng.info()
    assert info.is_fallback and info.name in ("piper", "espeak")
    assert "FALLBACK" in info.description and "not CSM" in info.description


@pytest.mark.parametrize("name", ["piper", "espeak"])
def test_fallback_engine_speaks_intelligibly(name, tmp_path, transcribe):
    eng = create_engine(load_settings(data_dir=tmp_path), name)
    assert isinstance(eng, TTSEngine)
    errors = []
    for text in SENTENCES:
        audio = eng.synthesize(SynthesisRequest(text=text))
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert np.sqrt(np.mean(audio**2)) > 0.01, "audio is silent"
        errors.append(wer(text, transcribe(audio, eng.sample_rate)))
    assert np.mean(errors) <= MAX_WER[name], errors


@pytest.mark.parametrize("name", ["piper", "espeak"])
def test_stream_yields_chunks_and_speed_changes_duration(name, tmp_path):
    eng = create_engine(load_settings(data_dir=tmp_path), name)
    text = "First sentence here. Second sentence follows. And a third one."
    chunks = list(eng.stream(SynthesisRequest(text=text)))
    assert len(chunks) == 3  # one per sentence: the first arrives before the rest are made
    normal = sum(c.size for c in chunks)
    fast = eng.synthesize(SynthesisRequest(text=text, speed=2.0)).size
    assert fast < 0.75 * normal


def test_max_audio_length_is_respected(tmp_path):
    eng = create_engine(load_settings(data_dir=tmp_path), "espeak")
    audio = eng.synthesize(SynthesisRequest(text="This sentence is long enough to last more than half a second.", max_audio_length_ms=500))
    assert audio.size <= eng.sample_rate // 2


def test_espeak_voice_names_cannot_inject_options(tmp_path):
    eng = create_engine(load_settings(data_dir=tmp_path), "espeak")
    # Not a voice name: falls back to the default voice instead of reaching argv.
    audio = eng.synthesize(SynthesisRequest(text="Hi there.", voice="--version"))
    assert audio.size > 0
    assert eng.synthesize(SynthesisRequest(text="Hi there.", voice="en-gb+f4")).size > 0
