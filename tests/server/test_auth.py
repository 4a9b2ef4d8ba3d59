"""API keys (static + CLI-made, hashed at rest), rate limits and the security log."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from conftest import AppServer, ServerProcess, assert_error, child_env, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.integration

STATIC_KEY = "static-test-key-0123456789"
KEY = "review-key-0123456789abcdefghijklmnopqrstuv"
KEY_ANALYZE = "review-analyze-key-0123456789abcdefghijklm"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    server = ServerProcess(
        tmp_path_factory.mktemp("secured"),
        "espeak",
        {"server": {"api_keys": [STATIC_KEY], "rate_limit_per_minute": 6, "cors_origins": ["http://studio.example"]}},
    ).start()
    yield server
    server.stop()


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    env = child_env(ECHOFORGE_DATA_DIR=str(server.data_dir))
    return subprocess.run(
        [sys.executable, "-m", "echoforge.cli", *args],
        env=env,
        cwd=server.data_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_health_and_studio_are_open(secured):
    health = httpx.get(secured.url + "/api/health").json()
    assert health["auth_required"] is True
    assert httpx.get(secured.url + "/").status_code == 200
    assert httpx.get(secured.url + "/docs").status_code == 200


def test_every_api_route_needs_a_key(secured):
    for method, path in [
        ("GET", "/api/voices"),
        ("GET", "/api/tasks"),
        ("POST", "/api/generate"),
        ("GET", "/v1/models"),
        ("GET", "/api/diagnostic"),
    ]:
        response = httpx.request(method, secured.url + path, json={"text": "hi"})
        err = assert_error(response, 401)
        assert err["type"] == "authentication_error"
    assert_error(httpx.get(secured.url + "/api/voices", headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(secured.url + "/api/voices", headers={"Authorization": f"Bearer {STATIC_KEY}"}).status_code == 200
    assert httpx.get(secured.url + "/api/voices", headers={"X-API-Key": STATIC_KEY}).status_code == 200


def test_openai_client_with_key(secured):
    with openai.OpenAI(base_url=secured.url + "/v1", api_key=STATIC_KEY, max_retries=0) as client:
        assert (
            client.audio.speech.create(
                model="tts-1", voice="alloy", input="Authorized.", response_format="wav"
            ).content[:4]
            == b"RIFF"
        )
    with (
        openai.OpenAI(base_url=secured.url + "/v1", api_key="nope", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()


def test_websocket_auth(secured):
    url = secured.url.replace("http://", "ws://") + "/api/stream"
    with connect(url) as ws:
        ws.send(json.dumps({"type": "start", "voice": "atlas"}))
        event = json.loads(ws.recv(timeout=10))
        assert event["type"] == "error" and event["status"] == 401
    with connect(url + f"?api_key={STATIC_KEY}") as ws:
        ws.send(json.dumps({"type": "start", "voice": "atlas"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    with connect(url) as ws:
        ws.send(json.dumps({"type": "start", "voice": "atlas", "api_key": STATIC_KEY}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"


def test_cli_keys_hashed_at_rest_and_revocable(secured):
    created = _cli(secured, "keys", "create", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("ef_")
    stored = (secured.data_dir / "api_keys.json").read_text()
    assert key not in stored and "ci" in stored
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(secured.url + "/api/voices", headers=headers).status_code == 200
    listed = _cli(secured, "keys", "list")
    assert "ci" in listed.stderr + listed.stdout and key not in listed.stderr + listed.stdout
    key_id = json.loads(stored)["keys"][0]["id"]
    assert _cli(secured, "keys", "revoke", key_id).returncode == 0
    assert_error(httpx.get(secured.url + "/api/voices", headers=headers), 401)
    assert _cli(secured, "keys", "revoke", "k_nothing").returncode != 0


def test_rate_limit_per_key_with_retry_after(secured):
    headers = {"X-API-Key": STATIC_KEY}
    statuses = []
    for _ in range(10):
        r = httpx.post(secured.url + "/api/generate", json={"text": "Rate limited?", "voice": "atlas"}, headers=headers)
        statuses.append(r.status_code)
        if r.status_code == 429:
            err = assert_error(r, 429)
            assert err["type"] == "rate_limit_error" and int(r.headers["Retry-After"]) >= 1
            break
    assert 429 in statuses and statuses[0] == 202
    # reads (e.g. polling a task) are not counted
    assert httpx.get(secured.url + "/api/tasks", headers=headers).status_code == 200


def test_cors_and_security_log_without_secrets(secured):
    pre = httpx.options(
        secured.url + "/api/voices", headers={"Origin": "http://studio.example", "Access-Control-Request-Method": "GET"}
    )
    assert pre.headers.get("access-control-allow-origin") == "http://studio.example"
    httpx.get(secured.url + "/api/voices", headers={"Authorization": "Bearer leaked-secret-123"})
    log = secured.log()
    assert "echoforge.security" in log and "auth failure" in log and "rate limit hit" in log
    assert "leaked-secret-123" not in log and STATIC_KEY not in log


# ------------------------------------------- a keyed server with small limits and DEBUG logs


def _flac(seconds: float, sr: int = 16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(int(seconds * sr), 0.25, dtype=np.float32), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """Keys on, small rate limits, DEBUG logging (to check that keys never reach the logs)."""
    data = tmp_path_factory.mktemp("guarded")
    server = ServerProcess(
        data,
        "espeak",
        {"server": {"api_keys": [KEY, KEY_ANALYZE], "rate_limit_per_minute": 4, "auth_failures_per_minute": 3}},
        log_level="DEBUG",
    ).start()
    yield server
    server.stop()


def _auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


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
    # The access log line of that request is written after its response: wait for it, not a time.
    def logged() -> str | None:
        text = guarded.log()
        return text if "/api/voices?api_key=" in text else None

    log = wait_until(logged, what="the access log line")
    assert "DEBUG" in log
    for i in range(0, len(KEY) - 12):
        assert KEY[i : i + 12] not in log, f"a piece of the key is in the log: {KEY[i:i + 12]}"


def test_docs_can_require_a_key(tmp_path):
    with AppServer(tmp_path, "espeak", {"server": {"api_keys": [KEY], "docs_require_key": True}}).start() as server:
        with server.client() as c:
            assert_error(c.get("/openapi.json"), 401)
            assert_error(c.get("/docs"), 401)
            assert c.get("/openapi.json", headers=_auth()).status_code == 200
            assert c.get("/").status_code == 200  # static studio files stay open


def test_unauthenticated_websocket_is_closed_without_a_start_message(tmp_path, monkeypatch):
    """With keys on and no key in the handshake, the socket is closed with an error unless the
    start message comes within ``UNAUTHENTICATED_START_TIMEOUT_S`` — short here, while the
    ordinary start timeout is made huge: the error can only come from the unauthenticated path."""
    from echoforge.server.routers import stream

    monkeypatch.setattr(stream, "UNAUTHENTICATED_START_TIMEOUT_S", 0.2)
    monkeypatch.setattr(stream, "START_TIMEOUT_S", 3600.0)
    with AppServer(tmp_path, "espeak", {"server": {"api_keys": [KEY]}}).start() as server:
        with connect(server.url.replace("http", "ws") + "/api/stream") as ws:  # no key, no start message
            msg = json.loads(ws.recv(timeout=120))
            assert msg["type"] == "error" and msg["code"] == "bad_start"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=120)
