"""Issue 25, "the first hour of a real user": long text on every path, offline docs, one text front-end.

Real server (espeak-ng engine, in-process uvicorn on loopback), real clients (the official
``openai`` client, httpx, the WebSocket). Amounts and order are asserted, never timings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _servers import wait_task

from echoforge.text import (
    audio_budget_ms,
    max_audio_seconds,
    sentence_ends,
    speech_seconds,
    split_complete,
    split_sentences,
)

PCM_RATE = 24_000

# About 4,000 characters of ordinary prose (≈ 4 minutes read aloud): sentences of varied length.
_SENTENCES = [
    "The morning train left the station a little after seven, carrying commuters, students and a few tired travellers.",
    "Dr. Smith read the report twice before she called the team together.",
    "Nobody expected the results to arrive so early, yet there they were, printed in neat columns on the table.",
    "It rained all afternoon.",
    "By the evening the river had risen by 3.5 metres, and the old bridge was closed to traffic.",
    "We talked about the plan for a long time; in the end we agreed to start again on Monday.",
]


def long_text(chars: int = 4000) -> str:
    out, i = [], 0
    while len(" ".join(out)) < chars:
        out.append(_SENTENCES[i % len(_SENTENCES)])
        i += 1
    text = " ".join(out)
    return text[: text.rfind(".", 0, chars) + 1]


# ---------------------------------------------------------------- the one text front-end (item 13)
def test_one_sentence_rule_knows_abbreviations_and_decimals():
    text = "Dr. Smith paid 3.5 dollars. Then he left! Mr. J. Jones stayed on Baker St. near the park. I said no."
    assert split_sentences(text, pack=False) == [
        "Dr. Smith paid 3.5 dollars.",
        "Then he left!",
        "Mr. J. Jones stayed on Baker St. near the park.",
        "I said no.",
    ]
    assert split_complete("Hello Dr. Smith. How are you? I am f") == (["Hello Dr. Smith.", "How are you?"], "I am f")
    assert split_complete("Hello Dr. ") == ([], "Hello Dr. ")
    assert sentence_ends("A 3.5 m wall. ") == [len("A 3.5 m wall.")]


def test_every_splitter_uses_the_one_rule():
    from echoforge.agent.rag import split_sentences as rag_split
    from echoforge.agent.sentences import SentenceSplitter
    from echoforge.server.services.speech_session import sentences
    from echoforge.server.services.speech_session import split_complete as ws_split

    text = "Dr. Smith measured 3.5 litres of water in the lab. The result was clear to everyone there. "
    expected = ["Dr. Smith measured 3.5 litres of water in the lab.", "The result was clear to everyone there."]
    assert sentences(text) == expected
    assert ws_split(text)[0] == expected
    assert rag_split(text)[1] == expected
    splitter = SentenceSplitter(first_clause_chars=0)
    assert splitter.push(text) + splitter.flush() == expected


def test_one_speaking_rate_and_the_audio_limit_follows_the_text_limit():
    from echoforge.csm import scheduler
    from echoforge.server.services import synthesis
    from echoforge.text import CHARS_PER_SECOND

    text = long_text()
    assert speech_seconds(text) == pytest.approx(len(text) / CHARS_PER_SECOND, rel=0.2)
    assert synthesis.estimate_seconds(text) == speech_seconds(text)
    assert not hasattr(synthesis, "CHARS_PER_SECOND") and not hasattr(synthesis, "_WORDS_PER_SECOND")
    assert getattr(scheduler, "_CHARS_PER_S", CHARS_PER_SECOND) == CHARS_PER_SECOND
    # A text within the character limit always gets more audio than it needs, at any speed.
    for speed in (0.25, 1.0, 4.0):
        assert audio_budget_ms(text, speed) / 1000 > 1.5 * speech_seconds(text, min(speed, 1.0))
    assert max_audio_seconds(4096) > 4096 / CHARS_PER_SECOND


# ---------------------------------------------------------------- long text on every path (item 2)
def _pcm_seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / PCM_RATE


def test_4000_characters_stream_through_the_official_openai_client(espeak_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{espeak_server.url}/v1", api_key="unused", max_retries=0, timeout=600)
    text = long_text(4000)
    assert 3800 < len(text) <= 4000
    reads: list[int] = []
    pcm = bytearray()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm"
    ) as response:
        for data in response.iter_bytes():
            reads.append(len(data))
            pcm += data
    seconds = _pcm_seconds(bytes(pcm))
    # ≈ 4 minutes of speech: all of it, nothing cut at the old 90 s limit.
    assert 150 < seconds < 420, seconds
    # Streamed: the audio came in many pieces, the first a small part of the whole.
    assert len(reads) > 20 and reads[0] < len(pcm) / 10, (len(reads), reads[:3], len(pcm))
    audio = np.frombuffer(bytes(pcm), dtype="<i2").astype(np.float32) / 32768
    last_minute = audio[-60 * PCM_RATE :]
    assert float(np.sqrt(np.mean(last_minute**2))) > 1e-3  # the end is speech too, not padding


def test_long_text_file_response_and_task_are_spoken_in_full(api):
    text = long_text(2500)  # ≈ 2.5 minutes: over the old 90 s audio limit
    r = api.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"})
    assert r.status_code == 200, r.text
    file_seconds = _pcm_seconds(r.content)
    assert file_seconds > 100, file_seconds

    r = api.post("/api/generate", json={"text": text, "voice": "alloy", "format": "pcm"})
    assert r.status_code == 202, r.text
    task = wait_task(api, r.json()["task_id"])
    assert task["status"] == "done", task
    audio = api.get(r.json()["audio_url"])
    assert audio.status_code == 200
    assert _pcm_seconds(audio.content) == pytest.approx(file_seconds, rel=0.1)


def test_over_the_character_limit_is_still_a_clear_400(api, espeak_server):
    limit = espeak_server.services.settings.server.max_text_chars
    r = api.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "word " * (limit // 5 + 10)})
    assert r.status_code == 400 and str(limit) in r.json()["error"]["message"]
    health = api.get("/api/health").json()
    limits = health.get("limits", health)
    assert limits.get("max_audio_s", 0) >= max_audio_seconds(limit) - 1  # follows from the text limit


def test_websocket_does_not_split_dr_smith(espeak_server):
    websockets = pytest.importorskip("websockets.sync.client")
    url = espeak_server.url.replace("http://", "ws://") + "/api/stream"
    with websockets.connect(url) as ws:
        ws.send(json.dumps({"type": "start", "voice": "alloy"}))
        ws.send(json.dumps({"type": "text", "text": "Dr. Smith is here. "}))
        ws.send(json.dumps({"type": "end"}))
        segments = []
        while True:
            msg = ws.recv(timeout=120)
            if isinstance(msg, bytes):
                continue
            event = json.loads(msg)
            if event["type"] == "segment_start":
                segments.append(event["text"])
            if event["type"] in ("done", "error"):
                break
    assert segments == ["Dr. Smith is here."], segments


# ---------------------------------------------------------------- offline docs, server side (item 1)
def test_docs_pages_reference_only_local_assets(api):
    for path in ("/docs", "/redoc"):
        r = api.get(path)
        assert r.status_code == 200
        html = r.text
        assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html and "unpkg" not in html, path
        assert "/docs-assets/" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = api.get(f"/docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000, asset


# ---------------------------------------------------------------- voices without a transcript (item 3)
def _speech_clip(tmp_path, text: str) -> bytes:
    import shutil
    import subprocess

    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng not installed")
    path = tmp_path / "clip.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path.read_bytes()


@pytest.mark.integration  # loads the bundled Whisper (tiny.en)
def test_a_voice_without_transcript_is_transcribed_and_a_clip_without_speech_refused(api, tmp_path):
    pytest.importorskip("faster_whisper")
    clip = _speech_clip(tmp_path, "This is my reference voice, recorded for the studio test.")
    r = api.post("/api/voices", data={"name": "Heard"}, files={"audio": ("clip.wav", clip, "audio/wav")})
    assert r.status_code == 201, r.text
    voice = r.json()
    assert "reference voice" in voice["transcript"].lower(), voice["transcript"]
    api.delete(f"/api/voices/{voice['id']}")

    from echoforge.audio import encode

    noise = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.1).astype(np.float32)
    r = api.post(
        "/api/voices", data={"name": "Noise"}, files={"audio": ("n.wav", encode(noise, 16000, "wav"), "audio/wav")}
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "no_speech" and error["param"] == "audio" and "no speech" in error["message"]
    # With a transcript nothing is second-guessed.
    r = api.post(
        "/api/voices",
        data={"name": "Given", "transcript": "Hello there."},
        files={"audio": ("c.wav", clip, "audio/wav")},
    )
    assert r.status_code == 201 and r.json()["transcript"] == "Hello there."
    api.delete(f"/api/voices/{r.json()['id']}")


def test_voice_names_are_unique(api):
    from echoforge.audio import encode

    tone = (0.2 * np.sin(np.arange(16000 * 2) / 5)).astype(np.float32)
    files = {"audio": ("t.wav", encode(tone, 16000, "wav"), "audio/wav")}
    first = api.post("/api/voices", data={"name": "Twin Name", "transcript": "A tone."}, files=files)
    assert first.status_code == 201, first.text
    again = api.post("/api/voices", data={"name": " twin name ", "transcript": "A tone."}, files=files)
    assert again.status_code == 409 and again.json()["error"]["param"] == "name", again.text
    assert "Twin Name" in again.json()["error"]["message"]
    builtin = api.post("/api/voices", data={"name": "atlas", "transcript": "A tone."}, files=files)
    assert builtin.status_code == 409
    other = api.post("/api/voices", data={"name": "Other Name", "transcript": "A tone."}, files=files).json()
    assert api.patch(f"/api/voices/{other['id']}", json={"name": "TWIN NAME"}).status_code == 409
    assert api.patch(f"/api/voices/{other['id']}", json={"name": "Other Name"}).status_code == 200  # its own name
    for v in (first.json(), other):
        api.delete(f"/api/voices/{v['id']}")
