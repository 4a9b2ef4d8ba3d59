"""``WS /api/agent``: PCM in, JSON events and PCM audio out, control messages, bad starts."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from echoforge.audio import float_to_pcm16
from echoforge.config import load_settings
from echoforge.server.routers.agent import router

pytestmark = pytest.mark.integration  # the agent WebSocket on the real models


@pytest.fixture
def client(models, espeak, tmp_path):
    app = FastAPI()
    app.include_router(router)
    # What the server's lifespan provides (app.state.services: settings + engine), plus the
    # already-loaded agent models so the test does not load them twice.
    app.state.services = SimpleNamespace(settings=load_settings(data_dir=tmp_path), engine=espeak)
    app.state.agent_models = models
    with TestClient(app) as c:
        yield c


def receive_until(ws, kind: str, timeout: float = 90.0):
    """(events, audio bytes) until a JSON event of type ``kind``."""
    events, audio = [], bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = ws.receive()
        if msg.get("bytes") is not None:
            audio += msg["bytes"]
            continue
        if msg.get("text") is None:
            raise AssertionError(f"socket closed: {msg}")
        event = json.loads(msg["text"])
        events.append(event)
        if event["type"] == kind:
            return events, bytes(audio)
    raise AssertionError(f"no {kind!r} event within {timeout} s")


def test_question_over_websocket_at_48k(client, say, espeak):
    from echoforge.audio import resample

    speech = resample(say("What port does the server use?"), 16_000, 48_000)
    pcm = float_to_pcm16(np.concatenate([np.zeros(14_400, np.float32), speech, np.zeros(72_000, np.float32)]))
    with client.websocket_connect("/api/agent") as ws:
        ws.send_json({"type": "start", "sample_rate": 48_000, "style": {"warmth": 0.9}})
        events, _ = receive_until(ws, "ready")
        assert events[-1]["sample_rate"] == espeak.sample_rate and events[-1]["input_sample_rate"] == 48_000
        for i in range(0, len(pcm), 3840):  # 40 ms frames, like a browser worklet
            ws.send_bytes(pcm[i : i + 3840])
        events, audio = receive_until(ws, "assistant")
        ws.send_json({"type": "stop"})
    kinds = [e["type"] for e in events]
    transcript = next(e for e in events if e["type"] == "transcript")
    assert "port" in transcript["text"].lower() and transcript["words"][0]["end"] > transcript["words"][0]["start"]
    retrieval = next(e for e in events if e["type"] == "retrieval")
    assert not retrieval["fallback"] and retrieval["passages"][0]["source"] == "server.md"
    assert "llm_text" in kinds and "latency" in kinds
    assert [e["state"] for e in events if e["type"] == "state"][-3:] == ["thinking", "speaking", "listening"]
    latency = next(e for e in events if e["type"] == "latency")
    assert latency["voice_to_voice_s"] > 0
    samples = np.frombuffer(audio, dtype="<i2")
    assert samples.size / espeak.sample_rate > 1.0 and np.abs(samples).max() > 3000


def test_interrupt_pause_resume_controls(client, say):
    pcm = float_to_pcm16(np.concatenate([say("Tell me a long story about a dragon."), np.zeros(24_000, np.float32)]))
    with client.websocket_connect("/api/agent") as ws:
        ws.send_json({"type": "start"})
        receive_until(ws, "ready")
        for i in range(0, len(pcm), 1280):
            ws.send_bytes(pcm[i : i + 1280])
        receive_until(ws, "bot_started")
        ws.send_json({"type": "interrupt"})
        events, _ = receive_until(ws, "assistant")
        assert any(e["type"] == "interrupt" and e["reason"] == "manual" for e in events)
        assert events[-1]["interrupted"] is True
        ws.send_json({"type": "pause"})
        events, _ = receive_until(ws, "state")
        assert events[-1]["state"] == "paused"
        ws.send_bytes(pcm)  # ignored while paused
        ws.send_json({"type": "resume"})
        events, audio = receive_until(ws, "state")
        assert events[-1]["state"] == "listening" and not audio
        assert not any(e["type"] in ("transcript", "user_started") for e in events)
        ws.send_json({"type": "nonsense"})
        events, _ = receive_until(ws, "error")
        assert "unknown message type" in events[-1]["message"]


def test_first_message_must_be_start(client):
    with client.websocket_connect("/api/agent") as ws:
        ws.send_json({"type": "interrupt"})
        msg = ws.receive_json()
        assert msg["type"] == "error" and msg["code"] == "bad_start"
    with client.websocket_connect("/api/agent") as ws:
        ws.send_json({"type": "start", "sample_rate": 5})
        assert ws.receive_json()["type"] == "error"
