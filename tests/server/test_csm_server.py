"""The server with a tiny random-weight CSM model (tests/csm/tiny_models.py) laid out like the real
download: the real CSM engine path — voice prompts as cached Mimi codes, continuous batching,
streaming — without downloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
from conftest import AppServer, wait_task, wait_until

from echoforge.audio import load_audio

TINY = Path(__file__).parents[1] / "csm" / "tiny_models.py"
pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not TINY.is_file(), reason="tests/csm/tiny_models.py (the CSM part's tiny-model fixture) is not in this checkout"
)]


def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random CSM laid out like the real `sesame/csm-1b` download: transformers shards named
    by config.json's `transformers_weights` (Mimi bundled) next to the original-layout
    model.safetensors and ckpt.pt."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("echoforge_tiny_models", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.save_real_layout(module.build_tiny_model(), tmp_path_factory.mktemp("tiny-csm") / "csm-1b")


@pytest.fixture(scope="module")
def csm_server(tmp_path_factory):
    model_dir = tiny_model_dir(tmp_path_factory)
    settings = {
        "device": "cpu",
        "csm": {"model": str(model_dir), "compile": False, "watermark": False, "max_batch_size": 2},
        "server": {"workers": 1},
        "generation": {"max_audio_length_ms": 8000},  # 100 frames: concurrent requests overlap
    }
    with AppServer(tmp_path_factory.mktemp("csm-server"), "csm", settings).start() as server:
        yield server


def test_tiny_csm_end_to_end(csm_server):
    with csm_server.client() as client:
        health = client.get("/api/health").json()
        assert health["engine"]["name"] == "csm" and health["engine"]["is_fallback"] is False
        assert health["engine"]["sample_rate"] == 24_000
        # a tiny random checkpoint is labelled as what it is, not as CSM-1B
        assert health["engine"]["smoke_test"] is True and "smoke-test model" in health["engine"]["description"]
        assert client.get("/v1/audio/voices").json()["engine"]["note"].startswith("A smoke-test model")
        body = {
            "text": "hello world how are you today",
            "voice": "atlas",
            "max_audio_length_ms": 640,
            "seed": 1,
            "temperature": 0.9,
        }
        task = wait_task(client, client.post("/api/generate", json=body).json()["task_id"], timeout=120)
        assert task["status"] == "done", task
        audio, sr = load_audio(client.get(task["result_url"]).content)
        assert sr == 24_000 and 0 < audio.size <= 24_000 * 0.7
        # the voice prompt (Mimi codes of the reference) was computed once and cached on disk
        assert list((csm_server.data_dir / "voices" / ".prompts").glob("atlas.*.pkl"))
        speech = client.post(
            "/v1/audio/speech",
            json={"model": "csm-1b", "input": "good morning", "voice": "alloy", "response_format": "wav"},
        )
        assert speech.status_code == 200 and speech.content[:4] == b"RIFF"


def test_concurrent_requests_share_frames_and_disconnect_frees_the_row(csm_server):
    """Four simultaneous /v1/audio/speech requests run in the scheduler's two slots together; a
    streaming client that hangs up early has its row removed (far fewer than 100 frames made)."""
    from concurrent.futures import ThreadPoolExecutor

    def speak(text):
        with csm_server.client() as c:
            r = c.post("/v1/audio/speech", json={"model": "csm-1b", "input": text, "voice": "alloy", "response_format": "pcm"})
            return r.status_code, len(r.content)

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(speak, ["hello world", "good morning", "how are you today", "one two three"]))
    assert all(code == 200 and size > 0 for code, size in results), results
    with csm_server.client() as client:
        sched = client.get("/api/health").json()["streams"]["scheduler"]
        assert sched["slots"] == 2 and sched["max_rows_seen"] == 2 and sched["active"] == 0
        # The streaming row is held after its first chunk until the server has seen the hang-up:
        # "the row is still generating when the client leaves" is true by construction.
        scheduler = csm_server.services.engine.generator.scheduler
        first_chunk = csm_server.settings.csm.first_chunk_frames
        real_decode, calls = scheduler.runner.decode, []

        def held_decode(hi, rows):
            calls.append(len(rows))
            if len(calls) > first_chunk + 1:  # the first chunk is out (+1 frame in flight)
                wait_until(lambda: all(s.should_stop is not None and s.should_stop() for s, _ in rows), what="the hang-up seen")
            return real_decode(hi, rows)

        before = dict(scheduler.stats)
        scheduler.runner.decode = held_decode
        try:
            body = {"model": "csm-1b", "input": "hello world", "voice": "alloy", "response_format": "pcm", "stream": True}
            with client.stream("POST", "/v1/audio/speech", json=body) as r:
                assert r.status_code == 200
                next(r.iter_bytes())
            sched = wait_until(lambda: (h := client.get("/api/health").json()["streams"]["scheduler"])["active"] == 0 and h,
                               what="the row gone")  # fmt: skip
        finally:
            scheduler.runner.decode = real_decode
        assert sched["rows_cancelled"] == before["rows_cancelled"] + 1
        assert sched["frames"] - before["frames"] <= first_chunk + 3  # far fewer than its 100-frame budget


# ----------------------- long text on CSM: piece after piece in one slot


def test_long_text_on_csm_is_spoken_past_the_configured_audio_limit(tmp_path_factory):
    model_dir = tiny_model_dir(tmp_path_factory)
    settings = {
        "device": "cpu",
        "csm": {"model": str(model_dir), "compile": False, "watermark": False, "max_batch_size": 1},
        "server": {"workers": 1, "rate_limit_per_minute": 0},
        "generation": {"max_audio_length_ms": 2000},  # the old rule refused anything over ≈ 2 s of speech
    }
    sentence = "hello world, how are you today? i am fine, thanks. "
    text = (sentence * 6).strip()  # ≈ 300 characters: several pieces
    with AppServer(tmp_path_factory.mktemp("csm-server"), "csm", settings).start() as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
            with client.stream("POST", "/v1/audio/speech", json=body) as r:
                assert r.status_code == 200, r.read()
                reads = [len(b) for b in r.iter_bytes()]
            seconds = sum(reads) / 2 / 24_000
            assert seconds > 4.0, seconds  # past the 2 s setting: the cap follows from the text
            assert len(reads) > 3  # streamed as generated
