"""WebSocket streaming: incremental text in, PCM audio out, sentence by sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from websockets.sync.client import connect


def _ws_url(server, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "/api/stream" + query


def _collect(ws, until: str = "done", timeout: float = 30) -> tuple[list[dict], bytes]:
    events, audio = [], bytearray()
    while True:
        msg = ws.recv(timeout=timeout)
        if isinstance(msg, bytes):
            audio += msg
            continue
        event = json.loads(msg)
        events.append(event)
        if event["type"] in (until, "error"):
            return events, bytes(audio)


def test_incremental_text_is_spoken_sentence_by_sentence(espeak_server):
    with connect(_ws_url(espeak_server)) as ws:
        ws.send(json.dumps({"type": "start", "voice": "rowan", "format": "pcm"}))
        ready = json.loads(ws.recv(timeout=10))
        assert ready["type"] == "ready" and ready["format"] == "pcm" and ready["sample_rate"] == 22_050
        # Tokens as an LLM would send them: the first sentence completes before the second starts.
        for token in ["Hello", " there", ". How", " are", " you", " today?", " I am", " fine"]:
            ws.send(json.dumps({"type": "text", "text": token}))
        first = json.loads(ws.recv(timeout=10))
        assert first == {"type": "segment_start", "text": "Hello there."}
        ws.send(json.dumps({"type": "end"}))
        events, audio = _collect(ws)
    starts = [e["text"] for e in events if e["type"] == "segment_start"]
    assert starts == ["How are you today?", "I am fine"]
    assert sum(e["type"] == "segment_end" for e in events) == 3
    assert events[-1]["type"] == "done"
    samples = np.frombuffer(audio, dtype="<i2")
    assert samples.size / 22_050 > 1.5


def test_flush_cancel_and_bad_messages(espeak_server):
    with connect(_ws_url(espeak_server)) as ws:
        ws.send(json.dumps({"type": "start", "voice": "maple"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send("not json")
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        ws.send(json.dumps({"type": "dance"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        ws.send(json.dumps({"type": "text", "text": "no punctuation yet"}))
        ws.send(json.dumps({"type": "flush"}))
        events, _ = _collect(ws, until="segment_end")
        assert events[0] == {"type": "segment_start", "text": "no punctuation yet"}
        ws.send(json.dumps({"type": "text", "text": "A long sentence that will be cancelled right away. " * 20}))
        ws.send(json.dumps({"type": "cancel"}))
        ws.send(json.dumps({"type": "text", "text": "After the cancel."}))
        ws.send(json.dumps({"type": "end"}))
        events, _ = _collect(ws)
        assert events[-1]["type"] == "done"
        assert any(e.get("text") == "After the cancel." for e in events)


@pytest.mark.parametrize(
    "start",
    [
        {"type": "text", "text": "hi"},
        {"type": "start", "voice": "nobody"},
        {"type": "start", "format": "mp3"},
        {"type": "start", "temperature": "hot"},
    ],
)
def test_bad_start_is_an_error_event(espeak_server, start):
    with connect(_ws_url(espeak_server)) as ws:
        ws.send(json.dumps(start))
        event = json.loads(ws.recv(timeout=10))
        assert event["type"] == "error" and event["message"]


def test_each_sentence_is_its_own_segment(espeak_server):
    with connect(_ws_url(espeak_server)) as ws:
        ws.send(json.dumps({"type": "start", "voice": "atlas"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": "First one. Second one! Third"}))
        ws.send(json.dumps({"type": "text", "text": " one?"}))
        ws.send(json.dumps({"type": "end"}))
        events, audio = _collect(ws)
    assert [e["text"] for e in events if e["type"] == "segment_start"] == ["First one.", "Second one!", "Third one?"]
    assert len(audio) > 0
