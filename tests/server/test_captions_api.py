"""POST /api/speech/captioned, task timestamps and caption downloads — on the real espeak-ng server.

espeak-ng reports when it speaks each word (its word events), so the words must line up with
the audio the same request returned: every input word, in order, inside the audio's length.
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import soundfile as sf
from conftest import assert_error, wait_task

TEXT = "Good morning, how are you today? The train leaves at 7 in the evening."
WORDS = TEXT.split()


def _check_words(words: list[dict], duration_s: float) -> None:
    assert [w["word"] for w in words] == WORDS
    assert set(words[0]) == {"word", "start_s", "end_s", "interpolated"}
    for a, b in zip(words, words[1:], strict=False):
        assert a["start_s"] <= a["end_s"] <= b["start_s"] <= b["end_s"]
    assert words[-1]["end_s"] <= duration_s + 1e-3
    assert words[0]["start_s"] < 0.5  # espeak starts speaking at once


def test_captioned_speech_returns_audio_and_every_word_in_order(api):
    r = api.post("/api/speech/captioned", json={"input": TEXT, "captions": "vtt"})
    assert r.status_code == 200, r.text
    body = r.json()
    audio, sr = sf.read(io.BytesIO(base64.b64decode(body["audio"])), dtype="float32")
    assert sr == body["sample_rate"] and body["audio_format"] == "wav"
    assert abs(audio.size / sr - body["duration_s"]) < 0.01
    assert body["timing"] == "engine" and body["engine"] == "espeak"
    _check_words(body["words"], body["duration_s"])
    # espeak-ng reports nearly every word itself ("in the" is one unit for it: "the" shares its time).
    assert sum(w["interpolated"] for w in body["words"]) <= 2
    assert body["captions"].startswith("WEBVTT\n\n00:00:00.")
    assert "Good morning, how are you today?" in body["captions"]


def test_caption_file_downloads(api):
    srt = api.post("/api/speech/captioned?format=srt", json={"input": TEXT})
    assert srt.status_code == 200 and srt.headers["content-type"].startswith("application/x-subrip")
    assert 'filename="speech.srt"' in srt.headers["content-disposition"]
    blocks = srt.text.strip().split("\n\n")
    assert [b.split("\n")[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
    assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", blocks[0].split("\n")[1])
    assert blocks[0].split("\n")[2:] == ["Good morning, how are you today?"]
    vtt = api.post("/api/speech/captioned?format=vtt", json={"input": TEXT})
    assert vtt.headers["content-type"].startswith("text/vtt") and vtt.text.startswith("WEBVTT\n\n")


def _events(r, sse: bool) -> list[dict]:
    if sse:
        return [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: ")]
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def test_streamed_json_lines_and_sse_carry_audio_and_the_words_completed_so_far(api):
    for sse in (False, True):
        r = api.post(
            "/api/speech/captioned",
            json={"input": TEXT, "stream": True, "stream_format": "sse" if sse else "jsonl"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream" if sse else "application/x-ndjson")
        events = _events(r, sse)
        assert [e["type"] for e in events][-1] == "done"
        audio_events = [e for e in events if e["type"] == "audio"]
        # Words come with the audio of their sentence: the first sentence's words before the end.
        first_with_words = next(i for i, e in enumerate(audio_events) if e["words"])
        assert first_with_words < len(audio_events) - 1
        streamed = [w for e in audio_events for w in e["words"]]
        done = events[-1]
        assert streamed == done["words"]
        wav = b"".join(base64.b64decode(e["audio"]) for e in audio_events)
        audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
        assert abs(audio.size / sr - done["duration_s"]) < 0.01
        _check_words(done["words"], done["duration_s"])


def test_bad_requests_are_clear_4xx(api):
    assert_error(api.post("/api/speech/captioned", json={"input": "   "}), 400, "input")
    assert_error(api.post("/api/speech/captioned", json={"input": "hi", "captions": "ass"}), 422, "captions")
    assert_error(api.post("/api/speech/captioned?format=txt", json={"input": "hi"}), 422, "format")
    assert_error(api.post("/api/speech/captioned", json={"input": "hi", "stream": "yes"}), 422, "stream")
    assert_error(api.post("/api/speech/captioned", json={"input": "hi", "voice_id": "x"}), 422)
    assert_error(api.post("/api/speech/captioned", json={"input": "hi", "voice": "nobody"}), 404, "voice")


def test_generate_task_with_timestamps_has_words_and_caption_downloads(api):
    r = api.post("/api/generate", json={"text": TEXT, "timestamps": True})
    assert r.status_code == 202, r.text
    task = wait_task(api, r.json()["task_id"])
    assert task["status"] == "done", task
    audio, sr = sf.read(io.BytesIO(api.get(task["result_url"]).content), dtype="float32")
    _check_words(task["words"], audio.size / sr)
    assert task["captions_url"] == f"/api/tasks/{task['id']}/captions"
    vtt = api.get(f"{task['captions_url']}?format=vtt")
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")
    srt = api.get(task["captions_url"], params={"format": "srt"})
    assert srt.text.startswith("1\n00:00:00,")
    as_json = api.get(task["captions_url"], params={"format": "json"}).json()
    assert as_json["words"] == task["words"]
    assert_error(api.get(task["captions_url"], params={"format": "doc"}), 422, "format")


def test_task_without_timestamps_has_no_captions(api):
    task = wait_task(api, api.post("/api/generate", json={"text": "Hello there."}).json()["task_id"])
    assert task["words"] is None and task["captions_url"] is None
    assert_error(api.get(f"/api/tasks/{task['id']}/captions"), 404)
    assert_error(api.get("/api/tasks/t_nope/captions"), 404)


def test_words_cover_the_speech(api):
    """The times point at speech: every word's span holds sound, and the words cover the audio."""
    body = api.post("/api/speech/captioned", json={"input": TEXT}).json()
    audio, sr = sf.read(io.BytesIO(base64.b64decode(body["audio"])), dtype="float32")
    words = body["words"]

    def rms(a: float, b: float) -> float:
        seg = audio[int(a * sr) : max(int(b * sr), int(a * sr) + 1)]
        return float(np.sqrt(np.mean(seg**2)))

    assert all(rms(w["start_s"], w["end_s"]) > 0.02 for w in words)
    covered = sum(w["end_s"] - w["start_s"] for w in words)
    assert covered > 0.8 * audio.size / sr
