"""API keys (static + CLI-made, hashed at rest), rate limits and the security log."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest
from conftest import ServerProcess, assert_error, child_env
from websockets.sync.client import connect

STATIC_KEY = "static-test-key-0123456789"


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
