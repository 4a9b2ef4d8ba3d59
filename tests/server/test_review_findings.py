"""Issue 16 review findings: OpenAI format details, one text rule everywhere, no silent truncation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from conftest import assert_error

SENTENCE = "The weather is lovely today, and the birds are singing."


def _speech(api, fmt: str, text: str = SENTENCE):
    return api.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt})


def test_pcm_is_24khz_whatever_the_engine(api):
    assert api.get("/api/health").json()["engine"]["sample_rate"] == 22_050  # espeak
    wav = _speech(api, "wav")
    pcm = _speech(api, "pcm")
    assert wav.status_code == pcm.status_code == 200
    audio, sr = sf.read(io.BytesIO(wav.content), dtype="float32")
    assert sr == 22_050
    pcm_seconds = len(pcm.content) / 2 / 24_000
    assert abs(pcm_seconds - audio.size / sr) < 0.05, (pcm_seconds, audio.size / sr)
    # Same pitch: the loudest frequency agrees once both are read at their own rates.
    p = np.frombuffer(pcm.content, dtype="<i2").astype(np.float32)
    f_pcm = np.argmax(np.abs(np.fft.rfft(p))) * 24_000 / p.size
    f_wav = np.argmax(np.abs(np.fft.rfft(audio))) * sr / audio.size
    assert abs(f_pcm - f_wav) < 0.05 * f_wav + 5


def test_flac_is_readable_by_soundfile(api):
    r = _speech(api, "flac")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/flac"
    info = sf.info(io.BytesIO(r.content))
    assert 0.5 < info.duration < 30, info
    audio, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == 22_050 and audio.size == info.frames and np.abs(audio).max() > 0.05


BAD_TEXT = {
    "nul": ("Hello\x00there", "control character"),
    "control only": ("\x01\x02\x03", "control character"),
    "zero width only": ("\u200b\u200c\u200d", "nothing to say"),
    "whitespace only": ("   \n ", "nothing to say"),
}


@pytest.mark.parametrize("case", list(BAD_TEXT))
def test_one_text_rule_for_v1_and_api(api, case):
    text, words = BAD_TEXT[case]
    v1 = assert_error(_speech(api, "wav", text), 400, "input")
    gen = assert_error(api.post("/api/generate", json={"text": text}), 400, "text")
    conv = assert_error(
        api.post("/api/conversations", json={"turns": [{"voice": "alloy", "text": "Hi."}, {"voice": "alloy", "text": text}]}),
        400,
        "turns.1.text",
    )
    for err in (v1, gen, conv):
        assert words in err["message"], err
    assert v1["message"].replace("input", "text", 1) == gen["message"]
    assert "turn 2 text" in conv["message"]


def test_zero_width_characters_are_dropped_not_refused(api):
    r = _speech(api, "wav", "Hel\u200blo there.")
    assert r.status_code == 200


def test_long_input_is_refused_naming_the_audio_limit_not_truncated(api):
    text = ("This sentence is here to make the input long enough to exceed the audio limit. " * 50)[:4000]
    err = assert_error(_speech(api, "wav", text), 400, "input")
    assert "90 s" in err["message"] and "max_audio_length_ms" in err["message"]
    err = assert_error(api.post("/api/generate", json={"text": text}), 400, "text")
    assert "90 s" in err["message"]
    # A caller that sets its own cap gets what it asked for.
    r = api.post("/api/generate", json={"text": text, "max_audio_length_ms": 2000})
    assert r.status_code == 202
    api.delete(f"/api/tasks/{r.json()['task_id']}")
