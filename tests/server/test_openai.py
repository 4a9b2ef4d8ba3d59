"""OpenAI-compatible API, called with the official ``openai`` client (unmodified)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from conftest import assert_error

from echoforge.audio import load_audio

TEXT = "Hello from EchoForge. This is the second sentence. And here is a third one."


@pytest.fixture()
def client(espeak_server):
    with openai.OpenAI(base_url=espeak_server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def _decode(data: bytes, fmt: str, sample_rate: int) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    audio, _ = load_audio(data)  # soundfile, then PyAV/FFmpeg
    return audio


@pytest.mark.parametrize("fmt", ["mp3", "wav", "opus", "flac", "aac", "pcm"])
def test_speech_each_format_is_playable(client, espeak_server, fmt):
    response = client.audio.speech.create(
        model="tts-1", voice="alloy", input="The weather is lovely today.", response_format=fmt
    )
    audio = _decode(response.content, fmt, 22_050)
    assert audio.size > 10_000 and float(np.abs(audio).max()) > 0.05


def test_streaming_response_arrives_in_chunks(client):
    with client.audio.speech.with_streaming_response.create(
        model="csm-1b", voice="onyx", input=TEXT, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers.get("transfer-encoding") == "chunked"
        chunks = [c for c in response.iter_bytes() if c]
    data = b"".join(chunks)
    assert len(chunks) >= 3  # header + one chunk per sentence, sent as generated
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    audio, sr = sf.read(io.BytesIO(data), dtype="float32")  # the open-ended streamed header is readable
    assert audio.size / sr > 2.0


def test_streaming_mp3_with_instructions_and_speed(client):
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="coral",
        input=TEXT,
        response_format="mp3",
        speed=1.5,
        instructions="Speak in a calm, soothing tone.",
    ) as response:
        data = response.read()
    fast, _ = load_audio(data)
    normal, _ = load_audio(
        client.audio.speech.create(model="tts-1", voice="coral", input=TEXT, response_format="mp3").content
    )
    assert fast.size < normal.size * 0.9


def test_sse_stream(espeak_server):
    body = {"model": "tts-1", "voice": "nova", "input": TEXT, "response_format": "pcm", "stream_format": "sse"}
    with httpx.stream("POST", espeak_server.url + "/v1/audio/speech", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] > 0
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) > 44_100  # > 1 s of 16-bit audio


def test_models_and_voices(client, espeak_server):
    ids = {m.id for m in client.models.list()}
    assert {"csm-1b", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= ids
    assert client.models.retrieve("tts-1").id == "tts-1"
    listed = httpx.get(espeak_server.url + "/v1/audio/voices").json()
    assert {"atlas", "juniper"} <= {v["id"] for v in listed["voices"]}
    # said where the voice is chosen: a fallback speaks every voice with its one voice
    engine = listed["engine"]
    assert engine["name"] == "espeak" and engine["is_fallback"] is True and engine["smoke_test"] is False
    assert "fallback engine (not CSM)" in engine["note"] and "CSM-1B weights" in engine["note"]


def test_errors_in_openai_shape(client, espeak_server):
    with pytest.raises(openai.NotFoundError) as exc:
        client.audio.speech.create(model="whisper-9", voice="alloy", input="hi")
    assert exc.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice="nobody", input="hi")
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=9.0)
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="   ")
    url = espeak_server.url + "/v1/audio/speech"
    assert_error(
        httpx.post(url, json={"model": "tts-1", "voice": "alloy", "input": "hi", "response_format": "ogg"}),
        400,
        "response_format",
    )
    assert_error(httpx.post(url, json={"voice": "alloy", "input": "hi"}), 400, "model")
    assert_error(httpx.post(url, json={"model": "tts-1", "voice": {"id": 3}, "input": "hi"}), 400, "voice")


# ---------------------------------------------------------------- wire formats, whatever the engine

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
