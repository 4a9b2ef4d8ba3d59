"""The EchoForge REST API against a real uvicorn server with the espeak-ng fallback engine."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import AppServer, assert_error, wait_task

from echoforge.audio import encode, load_audio
from echoforge.text import (
    max_audio_seconds,
)

OPENAI_VOICES = (
    "alloy",
    "echo",
    "fable",
    "onyx",
    "nova",
    "shimmer",
    "ash",
    "ballad",
    "coral",
    "sage",
    "verse",
    "marin",
    "cedar",
)


def _wav(seconds: float, sr: int = 16_000, freq: float = 200.0) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    return encode((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, "wav")


def test_health_reports_the_fallback_engine(api):
    body = api.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["engine"]["name"] == "espeak" and body["engine"]["is_fallback"] is True
    assert body["engine"]["sample_rate"] > 0
    assert body["queue"]["backend"] == "sqlite"
    assert body["auth_required"] is False
    assert body["uptime_s"] >= 0 and body["model_load_s"] >= 0


def test_health_describes_the_agent_without_loading_it(api, tmp_path):
    agent = api.get("/api/health").json()["agent"]
    kb = agent["knowledge_base"]  # the default folder, in the data dir, seeded with the shipped notes
    assert kb["folder"].endswith("knowledge_base") and kb["documents"] > 0 and kb["empty"] is False
    assert kb["chunks"] is None  # not indexed until the agent is first used
    assert agent["llm"] == {"backend": "llama.cpp", "building": False}
    empty = tmp_path / "notes"
    empty.mkdir()
    with AppServer(tmp_path / "data", "espeak", {"agent": {"knowledge_base": str(empty)}}).start() as server, server.client() as client:
        kb = client.get("/api/health").json()["agent"]["knowledge_base"]
    assert kb == {"folder": str(empty), "documents": 0, "chunks": None, "empty": True}


def test_studio_and_docs_are_served(api):
    index = api.get("/")
    assert index.status_code == 200 and "<html" in index.text.lower()
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    assert "/v1/audio/speech" in spec["paths"] and "/api/generate" in spec["paths"]


def test_unknown_route_is_an_openai_shaped_404(api):
    assert_error(api.get("/api/nope"), 404)


def test_builtin_voices_and_openai_aliases(api):
    voices = api.get("/api/voices").json()["voices"]
    builtin = [v for v in voices if v["builtin"]]
    assert len(builtin) >= 4
    for v in builtin:
        assert v["transcript"] and v["tags"]["gender"] and v["tags"]["language"]
        assert "synthetic" in v["description"].lower()
    for name in OPENAI_VOICES:
        voice = api.get(f"/api/voices/{name}").json()
        assert voice["builtin"] is True, name
    sample = api.get(builtin[0]["sample_url"])
    assert sample.status_code == 200 and sample.headers["content-type"].startswith("audio/")
    audio, sr = load_audio(sample.content)
    assert audio.size / sr > 1.0


def test_voice_upload_patch_delete(api):
    files = {"audio": ("../../etc/passwd.wav", _wav(2.0), "audio/wav")}
    data = {"name": "Tester", "transcript": "a test tone", "gender": "neutral", "style": "flat", "language": "en-US"}
    created = api.post("/api/voices", data=data, files=files)
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["id"].startswith("v_") and not voice["builtin"] and voice["tags"]["style"] == "flat"
    assert voice["id"] in {v["id"] for v in api.get("/api/voices").json()["voices"]}
    # stored under a generated name only
    assert "passwd" not in json.dumps(voice)
    sample = api.get(voice["sample_url"])
    audio, sr = load_audio(sample.content)
    assert abs(audio.size / sr - 2.0) < 0.05
    patched = api.patch(f"/api/voices/{voice['id']}", json={"name": "Renamed", "style": "bright"})
    assert (
        patched.status_code == 200
        and patched.json()["name"] == "Renamed"
        and patched.json()["tags"]["style"] == "bright"
    )
    # the new voice can speak (context prompt path is skipped for the fallback engine)
    task = api.post("/api/generate", json={"text": "Hello from my own voice.", "voice": voice["id"]}).json()
    assert wait_task(api, task["task_id"])["status"] == "done"
    assert api.delete(f"/api/voices/{voice['id']}").status_code == 204
    assert_error(api.get(f"/api/voices/{voice['id']}"), 404)


def test_upload_validation(api):
    garbage = api.post(
        "/api/voices", data={"name": "x"}, files={"audio": ("x.wav", b"not audio at all" * 100, "audio/wav")}
    )
    assert_error(garbage, 400, "audio")
    empty = api.post("/api/voices", data={"name": "x"}, files={"audio": ("x.wav", b"", "audio/wav")})
    assert_error(empty, 400, "audio")
    too_short = api.post("/api/voices", data={"name": "x"}, files={"audio": ("x.wav", _wav(0.1), "audio/wav")})
    assert_error(too_short, 400, "audio")
    too_long = api.post("/api/voices", data={"name": "x"}, files={"audio": ("x.wav", _wav(125.0, 8000), "audio/wav")})
    assert_error(too_long, 413, "audio")
    silent = api.post(
        "/api/voices",
        data={"name": "x"},
        files={"audio": ("x.wav", encode(np.zeros(16000, np.float32), 16000, "wav"), "audio/wav")},
    )
    assert_error(silent, 400, "audio")
    no_name = api.post("/api/voices", files={"audio": ("x.wav", _wav(1.0), "audio/wav")})
    assert_error(no_name, 422)


def test_builtin_voices_are_protected(api):
    err = assert_error(api.delete("/api/voices/atlas"), 403)
    assert "built-in" in err["message"]
    assert_error(api.patch("/api/voices/atlas", json={"name": "x"}), 403)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac", "aac", "pcm"])
def test_generate_each_format(api, fmt):
    created = api.post(
        "/api/generate", json={"text": "The quick brown fox. It jumps.", "voice": "juniper", "format": fmt, "seed": 1}
    )
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["status"] == "queued" and body["status_url"].endswith(body["task_id"])
    task = wait_task(api, body["task_id"])
    assert task["status"] == "done", task
    assert task["progress"] == 1.0 and task["format"] == fmt
    assert task["timings"]["audio_s"] > 0.5 and task["timings"]["rtf"] > 0
    audio = api.get(body["audio_url"])
    assert audio.status_code == 200
    if fmt == "pcm":
        samples = np.frombuffer(audio.content, dtype="<i2")
    else:
        samples, _ = load_audio(audio.content)
    assert samples.size > 10_000


def test_generate_with_context_and_defaults(api):
    body = {
        "text": "Sure, I can help.",
        "voice": "maple",
        "context": [{"speaker": 1, "text": "Can you help me?", "voice": "atlas"}],
    }
    task = wait_task(api, api.post("/api/generate", json=body).json()["task_id"])
    assert task["status"] == "done" and task["request"]["context"][0]["voice"] == "atlas"


def test_generate_errors(api):
    assert_error(api.post("/api/generate", json={"text": "hi", "voice": "nobody"}), 404, "voice")
    assert_error(api.post("/api/generate", json={"text": "x" * 5000, "voice": "atlas"}), 400, "text")
    assert_error(api.post("/api/generate", json={"text": "   ", "voice": "atlas"}), 400, "text")
    assert_error(api.post("/api/generate", json={"text": "hi", "temperature": 9}), 422, "temperature")
    assert_error(api.post("/api/generate", json={"text": "hi", "format": "exe"}), 422, "format")
    assert_error(api.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_error(api.post("/api/generate", json=[1, 2]), 422)
    assert_error(api.get("/api/tasks/t_missing"), 404)
    assert_error(api.get("/api/tasks?limit=0"), 422, "limit")


def test_conversation_task(api):
    turns = [
        {"voice": "atlas", "text": "Did you hear the news?"},
        {"voice": "juniper", "text": "No, tell me."},
        {"voice": "atlas", "text": "We won."},
    ]
    created = api.post("/api/conversations", json={"turns": turns, "format": "flac", "seed": 3})
    assert created.status_code == 202, created.text
    task = wait_task(api, created.json()["task_id"])
    assert task["status"] == "done" and task["kind"] == "conversation"
    audio, sr = sf.read(io.BytesIO(api.get(task["result_url"]).content))
    assert audio.size / sr > 2.0
    assert_error(api.post("/api/conversations", json={"turns": []}), 422)
    assert_error(api.post("/api/conversations", json={"turns": [{"voice": "ghost", "text": "hi"}]}), 404, "voice")


_LONG_TURN = " ".join(
    f"Sentence number {i} of this turn is here so that the whole turn takes far longer than half a minute."
    for i in range(1, 9)
)  # ~800 characters: about a minute of espeak speech


def test_a_long_conversation_turn_is_spoken_in_full(api):
    """Each turn's audio cap follows from its text (it was a fixed 30 s, which cut long turns)."""
    from echoforge.text import speech_seconds

    assert speech_seconds(_LONG_TURN) > 45
    turns = [{"voice": "atlas", "text": "Listen."}, {"voice": "juniper", "text": _LONG_TURN}]
    created = api.post("/api/conversations", json={"turns": turns, "format": "wav", "seed": 1})
    assert created.status_code == 202, created.text
    task = wait_task(api, created.json()["task_id"])
    assert task["status"] == "done", task
    audio, sr = sf.read(io.BytesIO(api.get(task["result_url"]).content))
    assert audio.size / sr > 40.0


def test_render_conversation_gives_each_turn_its_own_budget():
    from echoforge.conversation import Turn, render_conversation
    from echoforge.text import audio_budget_ms

    class Recorder:
        name, sample_rate, is_fallback = "fake", 1000, True

        def __init__(self):
            self.caps = []

        def synthesize(self, request):
            self.caps.append(request.max_audio_length_ms)
            return np.zeros(100, dtype=np.float32)

    engine = Recorder()
    render_conversation(engine, [Turn(0, "Hi."), Turn(1, _LONG_TURN)])
    assert engine.caps == [audio_budget_ms("Hi."), audio_budget_ms(_LONG_TURN)]
    assert engine.caps[1] > 90_000  # more than the old fixed 30 s, and more than the configured 90 s
    render_conversation(engine, [Turn(0, "Hi.")], max_audio_length_ms=5000)  # a caller's own cap is kept
    assert engine.caps[-1] == 5000


def test_task_list_and_cancel_finished(api):
    task_id = api.post("/api/generate", json={"text": "List me.", "voice": "atlas"}).json()["task_id"]
    wait_task(api, task_id)
    tasks = api.get("/api/tasks", params={"limit": 5}).json()["tasks"]
    assert task_id in {t["id"] for t in tasks}
    assert api.delete(f"/api/tasks/{task_id}").json()["status"] == "done"  # finished: unchanged


def test_diagnostic(api):
    body = api.get("/api/diagnostic").json()
    assert body["self_test"]["ok"] is True and body["self_test"]["rtf"] > 0
    assert body["engine"]["name"] == "espeak"
    assert body["config"]["server"]["port"] == 8000
    assert "memory" in body and "torch" in body


def test_oversized_body_is_413(api):
    big = b"x" * (21 * 1024 * 1024)
    assert_error(api.post("/api/generate", content=big, headers={"content-type": "application/json"}), 413)


# ---------------------------------------------------------------- one text rule for /v1 and /api


def _speech(api, fmt: str, text: str):
    return api.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt})


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


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"text": ""}, "text is required"),
        ({"text": "a" * 4097}, "text is longer than 4096 characters"),
        ({"text": "Hi.", "speed": 5}, "speed must be between 0.25 and 4"),
        ({"text": "Hi.", "speed": 0.1}, "speed must be between 0.25 and 4"),
    ],
)
def test_validation_messages_are_plain_words(api, fields, words):
    """Not pydantic's wording ("String should have at least 1 character"); same error shape and statuses."""
    param = "speed" if "speed" in fields else "text"
    v1_fields = {("input" if k == "text" else k): v for k, v in fields.items()}
    v1 = assert_error(
        api.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", **v1_fields}),
        400,
        "input" if param == "text" else param,
    )
    assert v1["message"].startswith(words.replace("text", "input", 1)), v1
    status = 400 if fields["text"] and param == "text" else 422  # the server's text rule, or the schema
    gen = assert_error(api.post("/api/generate", json=fields), status, param)
    assert gen["message"].startswith(words), gen
    for err in (v1, gen):
        assert err["type"] == "invalid_request_error" and "should" not in err["message"], err


def test_zero_width_characters_are_dropped_not_refused(api):
    r = _speech(api, "wav", "Hel\u200blo there.")
    assert r.status_code == 200


# ---------------------------------------------------------------- routes, bad bodies, uploads


def test_api_paths_answer_405_with_their_methods_and_json_404(api):
    r = api.get("/api/generate")
    assert_error(r, 405)
    assert r.headers["allow"] == "POST"
    r = api.post("/api/health")
    assert_error(r, 405)
    assert r.headers["allow"] == "GET"
    assert_error(api.get("/api/no-such-route"), 404)
    assert_error(api.get("/v1/nothing"), 404)
    assert api.get("/").status_code == 200  # the studio is still served


def test_invalid_json_is_described_plainly(api):
    headers = {"content-type": "application/json"}
    err = assert_error(api.post("/v1/audio/speech", content=b'{"model": "tts-1", "input": ', headers=headers), 400)
    assert "JSON decode error" not in err["message"] and "not valid JSON" in err["message"]
    assert err["param"] is None
    err = assert_error(api.post("/api/conversations", json={"turns": [{"voice": "alloy", "text": "Hi"}, {"voice": "alloy"}]}), 422)
    assert err["message"].startswith("turn 2 text is required"), err


def _flac(seconds: float, sr: int = 16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(int(seconds * sr), 0.25, dtype=np.float32), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def test_long_uploads_are_refused_before_decoding(api, monkeypatch):
    """An hour of audio is refused from its header: the decoder is never called (a spy on it)."""
    hour = _flac(3600)
    assert len(hour) < 2_000_000
    decoded = []
    real_read = sf.read  # load_audio decodes WAV/FLAC with soundfile.read (the server runs in this process)
    monkeypatch.setattr(sf, "read", lambda *a, **k: decoded.append(1) or real_read(*a, **k))
    err = assert_error(api.post("/api/voices", data={"name": "Long"}, files={"audio": ("a.flac", hour)}), 413, "audio")
    assert "3600.0 s long; the limit is 120 s" in err["message"]
    err = assert_error(api.post("/api/analyze", files={"audio": ("a.flac", hour)}), 413, "audio")
    assert decoded == []
    # Garbage is described in the user's terms, without library error numbers.
    err = assert_error(api.post("/api/analyze", files={"audio": ("a.mp3", b"not audio at all" * 64)}), 400, "audio")
    assert "Errno" not in err["message"] and "supported audio format" in err["message"]


def test_incomplete_voice_folders_are_removed_at_start(tmp_path):
    voices = tmp_path / "voices"
    (voices / "v_deadbeef0000").mkdir(parents=True)  # left by a kill -9 mid-upload
    (voices / ".staging-v_ba9876543210").mkdir()
    with AppServer(tmp_path, "espeak").start():
        assert not (voices / "v_deadbeef0000").exists()
        assert not (voices / ".staging-v_ba9876543210").exists()


#  long text on every path, local docs assets, voices without a transcript


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
