"""Word events on WS /api/stream ("timestamps": true): each segment's words after its audio, once, in order."""

from __future__ import annotations

import json

import numpy as np
from websockets.sync.client import connect


def _url(server) -> str:
    return server.url.replace("http://", "ws://") + "/api/stream"


def test_word_events_follow_the_audio_of_each_segment(espeak_server):
    with connect(_url(espeak_server)) as ws:
        ws.send(json.dumps({"type": "start", "voice": "rowan", "timestamps": True}))
        rate = json.loads(ws.recv(timeout=10))["sample_rate"]
        ws.send(json.dumps({"type": "text", "text": "Hello there, friend. It is 21 degrees today."}))
        ws.send(json.dumps({"type": "end"}))
        events, audio, segment_audio = [], bytearray(), {}
        while True:
            msg = ws.recv(timeout=30)
            if isinstance(msg, bytes):
                audio += msg
                continue
            event = json.loads(msg)
            if event["type"] == "words":
                event["audio_before"] = len(audio)
            events.append(event)
            if event["type"] == "segment_end":
                segment_audio[len(segment_audio)] = len(audio)
            if event["type"] in ("done", "error"):
                break
    starts = [e for e in events if e["type"] == "segment_start"]
    assert [s["text"] for s in starts] == ["Hello there, friend.", "It is 21 degrees today."]
    assert starts[0]["offset_s"] == 0.0 and starts[1]["offset_s"] > 0.5
    words = [e for e in events if e["type"] == "words"]
    said = [w["word"] for e in words for w in e["words"]]
    assert said == "Hello there, friend. It is 21 degrees today.".split()
    # Times are within their segment's audio, and a segment's words come after some of its audio.
    first_len = segment_audio[0] / 2 / rate
    seg1 = [w for e in words for w in e["words"]][:3]
    assert all(0 <= w["start_s"] <= w["end_s"] <= first_len + 1e-3 for w in seg1)
    assert words[0]["audio_before"] > 0
    assert np.frombuffer(bytes(audio), dtype="<i2").size / rate > 1.5


def test_timestamps_must_be_a_boolean(espeak_server):
    with connect(_url(espeak_server)) as ws:
        ws.send(json.dumps({"type": "start", "timestamps": "yes"}))
        event = json.loads(ws.recv(timeout=10))
        assert event["type"] == "error" and event["status"] == 400 and "timestamps" in event["message"]


def test_without_timestamps_nothing_changes(espeak_server):
    with connect(_url(espeak_server)) as ws:
        ws.send(json.dumps({"type": "start"}))
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "text", "text": "Hi there."}))
        ws.send(json.dumps({"type": "end"}))
        kinds = []
        while True:
            msg = ws.recv(timeout=30)
            if isinstance(msg, str):
                event = json.loads(msg)
                kinds.append(event)
                if event["type"] in ("done", "error"):
                    break
    assert kinds[0] == {"type": "segment_start", "text": "Hi there."}
    assert "words" not in [k["type"] for k in kinds]
