"""Analysis against ground truth made here: espeak-ng at known rates, sox pitch shifts, pure tones."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from echoforge.analysis import analyze_audio, apply_tone, choose_reply_emotion, parse_tone, tone_from_instructions
from echoforge.analysis.codes import code_features
from echoforge.analysis.emotion import text_sentiment
from echoforge.analysis.memory import ConversationMemory, ProfileStore
from echoforge.analysis.prosody import analyze_prosody
from echoforge.audio import load_audio
from echoforge.engines.base import Segment, SynthesisRequest

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."


def espeak(tmp_path, rate=175, pitch=50, voice="en-us", text=TEXT):
    path = tmp_path / f"s{rate}p{pitch}{voice}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(path), text], check=True)
    return load_audio(path)


def test_rate_is_ranked_and_ratio_within_15_percent(tmp_path):
    rates = {wpm: analyze_prosody(*espeak(tmp_path, rate=wpm)).speaking_rate for wpm in (120, 175, 240)}
    assert rates[120] < rates[175] < rates[240]
    for slow, fast in ((120, 175), (175, 240), (120, 240)):
        measured, truth = rates[fast] / rates[slow], fast / slow
        assert abs(measured / truth - 1) <= 0.15, (slow, fast, measured, truth)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
@pytest.mark.parametrize("cents", [-300, 200, 400])
def test_relative_pitch_change_within_10_percent(tmp_path, cents):
    audio, sr = espeak(tmp_path)
    src = tmp_path / "src.wav"
    import soundfile as sf

    sf.write(src, audio, sr)
    shifted = tmp_path / "shifted.wav"
    subprocess.run(["sox", str(src), str(shifted), "pitch", str(cents)], check=True)
    base = analyze_prosody(audio, sr).pitch_mean_hz
    moved = analyze_prosody(*load_audio(shifted)).pitch_mean_hz
    truth = 2 ** (cents / 1200)
    assert abs((moved / base) / truth - 1) <= 0.10


def test_espeak_pitch_setting_is_ranked(tmp_path):
    low, mid, high = (analyze_prosody(*espeak(tmp_path, pitch=p)).pitch_mean_hz for p in (20, 50, 80))
    assert low < mid < high


@pytest.mark.parametrize("freq", [110.0, 220.0, 330.0])
def test_pure_tone_pitch_within_2_percent(freq):
    sr = 24_000
    t = np.arange(sr) / sr
    p = analyze_prosody((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    assert abs(p.pitch_mean_hz / freq - 1) <= 0.02


def test_silence_and_noise_are_not_speech():
    sr = 16_000
    for audio in (np.zeros(sr * 2, np.float32), np.random.default_rng(0).normal(0, 0.2, sr * 2).astype(np.float32)):
        report = analyze_audio(audio, sr)
        assert not report.prosody.is_speech and report.prosody.syllables == 0
        assert report.emotion.label == "neutral" and report.emotion.confidence == 0.0


def test_word_timings_give_words_per_second(tmp_path):
    audio, sr = espeak(tmp_path)
    words = [{"word": w, "start": i * 0.3, "end": i * 0.3 + 0.25} for i, w in enumerate(TEXT.split())]
    p = analyze_prosody(audio, sr, words)
    assert p.rate_unit == "words/s" and p.speaking_rate == pytest.approx(len(words) / (words[-1]["end"]), rel=1e-6)


def test_pauses_are_counted(tmp_path):
    a, sr = espeak(tmp_path, text="First part.")
    b, _ = espeak(tmp_path, text="Second part.")
    joined = np.concatenate([a, np.zeros(int(0.6 * sr), np.float32), b])
    p = analyze_prosody(joined, sr)
    assert p.pause_count >= 1 and p.pause_mean_s >= 0.4


def test_emotion_follows_arousal_and_text(tmp_path):
    slow_low = analyze_audio(*espeak(tmp_path, rate=110, pitch=30, text="I am so tired and sad today."), transcript="I am so tired and sad today.")
    fast_high = analyze_audio(*espeak(tmp_path, rate=260, pitch=80, text="We won! This is amazing!"), transcript="We won! This is amazing!")
    assert slow_low.emotion.arousal < fast_high.emotion.arousal
    assert slow_low.emotion.label in ("sad", "calm") and fast_high.emotion.label in ("happy", "excited")
    assert 0 < fast_high.emotion.confidence <= 1
    assert text_sentiment("not good") < 0 < text_sentiment("what a lovely day")


def test_modifiers_parse():
    assert parse_tone("(gently) I hear you.") == ("I hear you.", ["calm"], [])
    assert parse_tone("[excited] We did it!") == ("We did it!", ["excited"], [])
    assert parse_tone("(softly)[happy] Hi") == ("Hi", ["calm", "happy"], [])
    assert parse_tone("No modifier (here).") == ("No modifier (here).", [], [])


def test_unknown_modifier_warns_and_is_not_spoken(caplog):
    with caplog.at_level("WARNING", logger="echoforge.analysis"):
        text, emotions, unknown = parse_tone("(bananas) Hello there.")
    assert text == "Hello there." and emotions == [] and unknown == ["bananas"]
    assert "unknown tone modifier" in caplog.text


def test_mapping_table_applied_end_to_end():
    req = apply_tone(SynthesisRequest(text="(calm) Take a breath."))
    assert (req.text, req.temperature, req.topk) == ("Take a breath.", 0.5, 20)
    req = apply_tone(SynthesisRequest(text="[happy] Great news."))
    assert (req.temperature, req.topk) == (0.8, 30)
    neutral = apply_tone(SynthesisRequest(text="(neutral) Plain.", temperature=0.9, topk=50))
    assert (neutral.temperature, neutral.topk) == (0.9, 50)
    overridden = apply_tone(SynthesisRequest(text="(calm) x"), {"emotion_params": {"calm": {"temperature": 0.3}}})
    assert (overridden.temperature, overridden.topk) == (0.3, 20)
    with pytest.raises(ValueError, match="empty"):
        apply_tone(SynthesisRequest(text="(calm)"))
    assert tone_from_instructions("Please speak calmly and softly")["emotion"] == "calm"
    assert tone_from_instructions("read it like a pirate") == {}


def test_reply_policy():
    assert choose_reply_emotion("sad", "mirror") == "sad"
    assert choose_reply_emotion("angry", "mirror") == "calm"
    assert choose_reply_emotion("excited", "calm_down") == "calm"
    assert choose_reply_emotion("sad", "lift_up") == "happy"
    with pytest.raises(ValueError):
        choose_reply_emotion("sad", "bogus")


def test_code_features():
    rng = np.random.default_rng(0)
    varied = code_features(rng.integers(0, 2048, (64, 32)))
    stuck = code_features(np.zeros((64, 32), int))
    assert varied["semantic"]["entropy_bits"] > 5 and stuck["semantic"]["entropy_bits"] == 0
    assert stuck["acoustic"]["repetition"] == 1.0 and varied["acoustic"]["change_rate"] > 0.9
    with pytest.raises(ValueError):
        code_features(np.zeros(5))


def test_short_term_memory_keeps_prompt_and_drops_oldest():
    prompt = Segment(speaker=0, text="prompt " * 10)
    mem = ConversationMemory(lambda s: len(s.text.split()), max_tokens=40, prompt=prompt)
    for i in range(10):
        mem.add(Segment(speaker=i % 2, text=f"turn {i} " + "w " * 6))  # 8 tokens each
    ctx = mem.context()
    assert ctx[0] is prompt
    assert [s.text.split()[1] for s in ctx[1:]] == ["7", "8", "9"]  # 10 + 3*8 = 34 <= 40


def test_profile_persists_and_detects_drift(tmp_path):
    store = ProfileStore(tmp_path)
    a1, sr = espeak(tmp_path, voice="en-us", text="Hello, this is my usual voice speaking today.")
    a2, _ = espeak(tmp_path, voice="en-us", text="Here is another sentence in the very same voice.")
    for audio in (a1, a2):
        profile, _ = store.observe("narrator", audio, sr, "text")
    reloaded = ProfileStore(tmp_path).load("narrator")
    assert reloaded is not None and reloaded.turns == 2 and reloaded.pitch_mean_hz > 0
    from echoforge.analysis.speaker import backend_name, cosine, embed_speaker
    from echoforge.config import load_settings
    from echoforge.engines import create_engine

    assert reloaded.embedding_backend == backend_name()
    piper = create_engine(load_settings(data_dir=tmp_path), "piper")
    other = piper.synthesize(SynthesisRequest(text="Hello, this is a completely different speaker."))
    same = espeak(tmp_path, voice="en-us", text="And a third line from the same speaker.")[0]
    female = espeak(tmp_path, voice="en-us+f3", text="And a third line from another speaker.")[0]
    e_same, e_other, e_female = embed_speaker(same, sr), embed_speaker(other, piper.sample_rate), embed_speaker(female, sr)
    assert not reloaded.drifted(e_same)
    assert reloaded.drifted(e_other) and reloaded.drifted(e_female)
    # The threshold sits between the two: same voice well above it, other voices well below.
    assert reloaded.similarity(e_same) > 0.8 > 0.75 > 0.7 > max(reloaded.similarity(e_other), reloaded.similarity(e_female))
    assert cosine(e_same, e_other) < 0.7
    with pytest.raises(ValueError):
        store.load("../etc/passwd")


def test_profile_from_another_encoder_restarts_instead_of_drifting(tmp_path):
    """A profile saved with the 19-d MFCC fallback is not compared with 256-d d-vectors."""
    import json

    from echoforge.analysis.memory import VoiceProfile
    from echoforge.analysis.speaker import backend_name, embed_speaker

    store = ProfileStore(tmp_path)
    old = VoiceProfile("old", turns=5, embedding=[0.1] * 19)  # an old profile: no embedding_backend field
    (tmp_path / "profiles").mkdir()
    d = {k: v for k, v in old.__dict__.items() if k != "embedding_backend"}
    (tmp_path / "profiles" / "old.json").write_text(json.dumps(d | {"some_future_field": 1}))
    audio, sr = espeak(tmp_path, voice="en-us", text="Hello, this is my usual voice speaking today.")
    emb = embed_speaker(audio, sr)
    assert not store.load("old").drifted(emb)  # not comparable: no false alarm, no crash
    profile, sim = store.observe("old", audio, sr, "hello")
    assert sim == 1.0 and len(profile.embedding) == emb.size and profile.embedding_backend == backend_name()


def test_stream_analyzer_updates_every_16_frames(tmp_path):
    from echoforge.analysis.stream import StreamAnalyzer

    audio, sr = espeak(tmp_path)
    analyzer = StreamAnalyzer(sr, update_every=16)
    frame = int(0.08 * sr)
    updates = [i for i, start in enumerate(range(0, frame * 48, frame)) if analyzer.push(np.resize(audio, frame * 48)[start : start + frame])]
    assert updates == [15, 31, 47]  # after the 16th, 32nd and 48th frame
    prosody, emotion = analyzer.latest
    assert prosody.is_speech and emotion.label
    with pytest.raises(ValueError):
        StreamAnalyzer(sr, update_every=0)


def test_profile_saves_are_atomic_under_concurrency(tmp_path):
    """Concurrent saves of one profile never leave a half-written file for a reader (found by
    schemathesis: GET /api/voices/{id}/profile answered 400 'Extra data' while another request wrote)."""
    import threading

    from echoforge.analysis.memory import VoiceProfile

    store = ProfileStore(tmp_path)
    store.save(VoiceProfile("juniper"))
    errors: list[Exception] = []
    stop = threading.Event()

    def write(n: int) -> None:
        for i in range(60):
            store.save(VoiceProfile("juniper", turns=n * 1000 + i, embedding=[0.5] * (n * 50 + i)))

    def read() -> None:
        while not stop.is_set():
            try:
                assert store.load("juniper") is not None
            except Exception as exc:  # a torn file
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert not list(tmp_path.glob("profiles/*.tmp"))
