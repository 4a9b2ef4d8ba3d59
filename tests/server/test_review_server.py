"""Issue 16 review findings on real servers: upload limits, auth hygiene, failure behaviour, routing."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, assert_error, free_port

KEY = "review-key-0123456789abcdefghijklmnopqrstuv"
KEY_ANALYZE = "review-analyze-key-0123456789abcdefghijklm"
KEY_JSON = "review-json-key-0123456789abcdefghijklmnopq"


def _flac(seconds: float, sr: int = 16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(int(seconds * sr), 0.25, dtype=np.float32), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """Keys on, small rate limits, DEBUG logging (to check that keys never reach the logs)."""
    data = tmp_path_factory.mktemp("guarded")
    (data / "voices" / "v_deadbeef0000").mkdir(parents=True)  # left by a kill -9 mid-upload
    (data / "voices" / ".staging-v_ba9876543210").mkdir()
    server = ServerProcess(
        data,
        "espeak",
        {"server": {"api_keys": [KEY, KEY_ANALYZE, KEY_JSON], "rate_limit_per_minute": 4, "auth_failures_per_minute": 3}},
        log_level="DEBUG",
    ).start()
    yield server
    server.stop()


def _auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_incomplete_voice_folders_are_removed_at_start(guarded):
    voices = guarded.data_dir / "voices"
    assert not (voices / "v_deadbeef0000").exists()
    assert not (voices / ".staging-v_ba9876543210").exists()


def test_long_uploads_are_refused_before_decoding(guarded):
    hour = _flac(3600)
    assert len(hour) < 2_000_000
    with guarded.client(headers=_auth()) as c:
        t0 = time.perf_counter()
        err = assert_error(c.post("/api/voices", data={"name": "Long"}, files={"audio": ("a.flac", hour)}), 413, "audio")
        assert "3600.0 s long; the limit is 120 s" in err["message"]
        err = assert_error(c.post("/api/analyze", files={"audio": ("a.flac", hour)}), 413, "audio")
        assert time.perf_counter() - t0 < 3.0
        # Garbage is described in the user's terms, without library error numbers.
        err = assert_error(c.post("/api/analyze", files={"audio": ("a.mp3", b"not audio at all" * 64)}), 400, "audio")
        assert "Errno" not in err["message"] and "supported audio format" in err["message"]


def test_analyze_is_rate_limited(guarded):
    clip = _flac(1.0)
    with guarded.client(headers=_auth(KEY_ANALYZE)) as c:
        codes = [c.post("/api/analyze", files={"audio": ("a.flac", clip)}).status_code for _ in range(6)]
    assert 429 in codes, codes


def test_wrong_keys_are_rate_limited(guarded):
    with guarded.client() as c:
        codes = [c.get("/api/tasks", headers=_auth(f"wrong-{i}")).status_code for i in range(6)]
        assert codes[:3] == [401, 401, 401] and codes[-1] == 429, codes
        r = c.get("/api/tasks", headers=_auth("wrong-again"))
        assert_error(r, 429)
        assert int(r.headers["Retry-After"]) >= 1
        assert c.get("/api/voices", headers=_auth()).status_code in (200, 429)  # a valid key is never locked out


def test_unauthenticated_websocket_is_closed_quickly(guarded):
    from websockets.sync.client import connect

    url = guarded.url.replace("http", "ws") + "/api/stream"
    t0 = time.perf_counter()
    with connect(url) as ws:  # no key, no start message
        msg = json.loads(ws.recv(timeout=15))
    assert msg["type"] == "error" and time.perf_counter() - t0 < 8.0


def test_keys_never_reach_the_logs(guarded):
    from websockets.sync.client import connect

    url = guarded.url.replace("http", "ws") + "/api/stream"
    with connect(url, additional_headers={"X-API-Key": KEY}) as ws:
        ws.send(json.dumps({"type": "start", "voice": "rowan", "api_key": KEY}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "end"}))
        with pytest.raises(Exception):  # noqa: B017 - read until the server closes
            while True:
                ws.recv(timeout=30)
    httpx.get(guarded.url + "/api/voices?api_key=" + KEY, headers={"X-API-Key": KEY})
    time.sleep(0.3)
    log = guarded.log()
    assert "DEBUG" in log
    for i in range(0, len(KEY) - 12):
        assert KEY[i : i + 12] not in log, f"a piece of the key is in the log: {KEY[i:i + 12]}"


def test_api_paths_answer_405_with_their_methods_and_json_404(guarded):
    with guarded.client(headers=_auth()) as c:
        r = c.get("/api/generate")
        assert_error(r, 405)
        assert r.headers["allow"] == "POST"
        r = c.post("/api/health")
        assert_error(r, 405)
        assert r.headers["allow"] == "GET"
        assert_error(c.get("/api/no-such-route"), 404)
        assert_error(c.get("/v1/nothing"), 404)
        assert c.get("/").status_code == 200  # the studio is still served


def test_invalid_json_is_described_plainly(guarded):
    with guarded.client(headers={**_auth(KEY_JSON), "content-type": "application/json"}) as c:
        err = assert_error(c.post("/v1/audio/speech", content=b'{"model": "tts-1", "input": '), 400)
        assert "JSON decode error" not in err["message"] and "not valid JSON" in err["message"]
        assert err["param"] is None
        err = assert_error(c.post("/api/conversations", json={"turns": [{"voice": "alloy", "text": "Hi"}, {"voice": "alloy"}]}), 422)
        assert err["message"].startswith("turn 2 text is required"), err


def test_docs_can_require_a_key(tmp_path):
    server = ServerProcess(tmp_path, "espeak", {"server": {"api_keys": [KEY], "docs_require_key": True}}).start()
    try:
        with server.client() as c:
            assert_error(c.get("/openapi.json"), 401)
            assert_error(c.get("/docs"), 401)
            assert c.get("/openapi.json", headers=_auth()).status_code == 200
            assert c.get("/").status_code == 200  # static studio files stay open
    finally:
        server.stop()


def test_port_opens_before_requeued_tasks_run(tmp_path):
    from echoforge.server.services.queue import SQLiteTaskQueue

    queue = SQLiteTaskQueue(tmp_path)
    text = " ".join(["hello"] * 60) + "."  # ~6 s with SINE_DELAY=0.1 (one chunk per word)
    body = {"text": text, "voice": "atlas", "context": [], "format": "wav"}
    task = queue.enqueue("generate", body, "wav")
    queue.close()
    server = ServerProcess(tmp_path, "sine", env={"SINE_DELAY": "0.1"}).start()
    try:
        with server.client() as c:
            status = c.get(f"/api/tasks/{task.id}").json()
            assert status["status"] in ("queued", "running"), status["error"]
            c.delete(f"/api/tasks/{task.id}")
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_down_is_503_with_retry_after(tmp_path):
    pytest.importorskip("redis")
    port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        settings = {"server": {"queue_backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"}}
        server = ServerProcess(tmp_path, "espeak", settings).start()
        try:
            redis_proc.terminate()
            redis_proc.wait(10)
            with server.client() as c:
                r = c.get("/api/health")
                assert r.status_code == 503 and r.headers["Retry-After"]
                health = r.json()
                assert health["status"] == "degraded" and health["queue"]["reachable"] is False
                assert "unreachable" in health["queue"]["error"]
                for r in (c.post("/api/generate", json={"text": "Hello."}), c.get("/api/tasks")):
                    err = assert_error(r, 503)
                    assert err["code"] == "queue_unavailable" and r.headers["Retry-After"]
                assert c.post(
                    "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Still speaking.", "response_format": "wav"}
                ).status_code == 200
            assert "Traceback" not in server.log()
        finally:
            server.stop()
    finally:
        if redis_proc.poll() is None:
            redis_proc.kill()
