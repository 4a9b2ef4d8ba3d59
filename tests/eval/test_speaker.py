"""The speaker encoder: Resemblyzer d-vectors from the packaged weights, same voice above different voices."""

from __future__ import annotations

import numpy as np
import pytest

from echoforge.analysis import speaker as sp
from echoforge.audio import resample

pytestmark = pytest.mark.skipif(
    sp.resemblyzer_weights() is None, reason="resemblyzer not installed (pip install resemblyzer)"
)


@pytest.fixture(scope="module")
def clips():
    from echoforge.config import load_settings
    from echoforge.engines import SynthesisRequest, create_engine

    settings = load_settings()
    piper, espeak = create_engine(settings, "piper"), create_engine(settings, "espeak")
    texts = ["Good morning, how are you today?", "The children were playing in the garden."]
    out = {}
    for i, t in enumerate(texts):
        out[("piper", i)] = (piper.synthesize(SynthesisRequest(text=t)), piper.sample_rate)
        for v in ("en-us", "en-us+f3"):
            out[(v, i)] = (espeak.synthesize(SynthesisRequest(text=t, voice=v)), espeak.sample_rate)
    a, sr = out[("piper", 1)]
    out[("piper+4st", 1)] = (resample(a, int(sr * 2 ** (4 / 12)), sr), sr)  # pitch and formants up 4 semitones
    return {k: sp.embed_speaker(*v) for k, v in out.items()}


def test_backend_is_resemblyzer_not_the_fallback():
    assert sp.backend_name() == "resemblyzer" and not sp.is_fallback()
    assert "pretrained.pt" in sp.backend_note()


def test_same_voice_scores_above_other_voices_and_a_pitch_shifted_copy(clips):
    """Measured (2026-12-01): piper/piper 0.84, en-us/en-us 0.82; piper/espeak 0.40-0.46, en-us/en-us+f3 0.61,
    piper/piper+4 st 0.56."""
    cos = sp.cosine
    piper_same = cos(clips[("piper", 0)], clips[("piper", 1)])
    espeak_same = cos(clips[("en-us", 0)], clips[("en-us", 1)])
    assert piper_same > 0.75 and espeak_same > 0.75
    assert piper_same > cos(clips[("piper", 0)], clips[("en-us", 1)]) + 0.2
    assert espeak_same > cos(clips[("en-us", 0)], clips[("en-us+f3", 1)]) + 0.1
    assert piper_same > cos(clips[("piper", 0)], clips[("piper+4st", 1)]) + 0.1


def test_noise_is_self_similar_so_the_suite_needs_signal_gates():
    """Why SIM alone cannot be trusted: white noise scores ~1.0 against other white noise."""
    rng = np.random.default_rng(0)
    a, b = (sp.embed_speaker((0.1 * rng.standard_normal(32000)).astype(np.float32), 16000) for _ in range(2))
    assert sp.cosine(a, b) > 0.9
    assert not np.any(sp.embed_speaker(np.zeros(100, np.float32), 16000))  # empty/silent -> zero vector


def test_mfcc_fallback_is_labelled(monkeypatch):
    monkeypatch.setenv("ECHOFORGE_SPEAKER_BACKEND", "mfcc")
    assert sp.backend_name() == "mfcc (fallback)" and sp.is_fallback()
    assert sp.embed_speaker(np.sin(np.arange(16000) / 5).astype(np.float32), 16000).shape == (19,)
    from echoforge.eval.report import markdown

    md = markdown({"set": "x", "asr": "a", "speaker_backend": sp.backend_name(), "speaker_backend_note": sp.backend_note(),
                   "n_sentences": 0, "n_turns": 0, "results": []})  # fmt: skip
    assert "MFCC FALLBACK" in md


def test_matches_resemblyzer_when_librosa_is_there():
    """The librosa-free pipeline equals Resemblyzer's own (checked once with librosa 0.11: cosine 1.0000)."""
    pytest.importorskip("librosa")
    from resemblyzer import VoiceEncoder, preprocess_wav

    rng = np.random.default_rng(1)
    t = np.arange(48000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size))
    audio = audio.astype(np.float32)
    ref = VoiceEncoder("cpu", verbose=False).embed_utterance(preprocess_wav(audio, source_sr=16000))
    assert sp.cosine(ref, sp.embed_speaker(audio, 16000)) > 0.999
