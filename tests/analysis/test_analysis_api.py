"""Analysis through the server and CLI: /api/analyze, profiles, tone modifiers reaching the engine."""

from __future__ import annotations

import subprocess

import pytest
from _servers import wait_task
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from echoforge.cli import app as cli_app
from echoforge.config import load_settings
from echoforge.engines.base import SynthesisRequest
from echoforge.server.app import create_app


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello there, how are you doing today?"], check=True)
    return path


@pytest.fixture()
def client(tmp_path):
    with TestClient(create_app(load_settings(engine="espeak", data_dir=tmp_path))) as c:
        yield c


def test_analyze_endpoint(client, clip):
    r = client.post("/api/analyze", files={"audio": ("clip.wav", clip.read_bytes(), "audio/wav")}, data={"transcript": "Hello there"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prosody"]["is_speech"] and body["prosody"]["pitch_mean_hz"] > 50
    assert body["emotion"]["label"] in ("neutral", "happy", "calm", "excited", "sad", "angry")


def test_analyze_rejects_garbage(client):
    r = client.post("/api/analyze", files={"audio": ("x.wav", b"not audio" * 30, "audio/wav")})
    assert r.status_code == 400 and "audio" in r.json()["error"]["message"]


def test_profile_grows_from_generations_and_persists(tmp_path):
    settings = load_settings(engine="espeak", data_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/voices/juniper/profile").status_code == 404
        task = c.post("/api/generate", json={"text": "A sentence long enough to analyse well.", "voice": "juniper"}).json()
        assert wait_task(c, task["task_id"])["status"] == "done"
    with TestClient(create_app(settings)) as c:  # a restart: the profile is still there
        profile = c.get("/api/voices/juniper/profile").json()
        assert profile["turns"] == 1 and profile["pitch_mean_hz"] > 0 and profile["embedding_dim"] > 0


def test_calm_modifier_reaches_the_engine_with_calm_parameters(tmp_path):
    """A `(calm)` request is stripped of its modifier and gets calm's temperature/top-k."""
    seen: list[SynthesisRequest] = []
    app = create_app(load_settings(engine="espeak", data_dir=tmp_path))
    with TestClient(app) as c:
        services = app.state.services
        original = services.engine.stream

        def spy(request):
            seen.append(request)
            return original(request)

        services.engine.stream = spy
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "(calm) Take a slow breath.", "response_format": "wav"})
        assert r.status_code == 200
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello.", "instructions": "sound excited!", "response_format": "wav"})
        assert r.status_code == 200
    calm = next(req for req in seen if req.text == "Take a slow breath.")
    assert (calm.temperature, calm.topk) == (0.5, 20)
    assert any(req.text == "Hello." and (req.temperature, req.topk) == (0.9, 35) for req in seen)


def test_cli_analyze(clip, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["analyze", str(clip), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    for word in ("energy", "pitch", "speaking rate", "pauses", "emotion", "confidence"):
        assert word in result.output
    assert (tmp_path / "p.png").stat().st_size > 1000
    result = runner.invoke(cli_app, ["analyze", str(clip), "--json"])
    assert result.exit_code == 0 and '"emotion"' in result.output
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk" * 100)
    result = runner.invoke(cli_app, ["analyze", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output
