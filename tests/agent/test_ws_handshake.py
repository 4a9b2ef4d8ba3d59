"""``WS /api/agent`` follows ``/api/stream``'s handshake: a wrong key is refused at once, and with
keys on but none in the handshake the start message must come within the short timeout."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from echoforge.agent.testing import FakeTTS
from echoforge.config import load_settings
from echoforge.server.routers import stream
from echoforge.server.routers.agent import router


class Keys:
    required = True

    def verify(self, key):
        return "key-1" if key == "good-key" else None


@pytest.fixture
def client(tmp_path):
    app = FastAPI()
    app.include_router(router)
    app.state.services = SimpleNamespace(
        settings=load_settings(data_dir=tmp_path), engine=FakeTTS(), keys=Keys(), auth_failures=None,
        limiter=SimpleNamespace(hit=lambda _principal: None),
    )  # fmt: skip
    with TestClient(app) as c:
        yield c


def test_wrong_key_in_the_handshake_is_refused_before_any_start_message(client):
    with client.websocket_connect("/api/agent", headers={"X-API-Key": "wrong"}) as ws:
        msg = ws.receive_json()  # nothing sent: the refusal comes from the handshake alone
        assert msg["type"] == "error" and msg["status"] == 401 and "invalid API key" in msg["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008


def test_no_key_means_the_short_start_timeout(client, monkeypatch):
    # The ordinary start timeout is made huge: the error can only come from the unauthenticated path.
    monkeypatch.setattr(stream, "UNAUTHENTICATED_START_TIMEOUT_S", 0.2)
    monkeypatch.setattr("echoforge.server.routers.agent.START_TIMEOUT_S", 3600.0)
    with client.websocket_connect("/api/agent") as ws:  # no key, no start message
        msg = ws.receive_json()
        assert msg["type"] == "error" and msg["code"] == "bad_start"
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()


def test_a_start_message_without_the_key_is_refused(client):
    with client.websocket_connect("/api/agent") as ws:
        ws.send_json({"type": "start", "sample_rate": 16000})
        msg = ws.receive_json()
        assert msg["type"] == "error" and "missing API key" in msg["message"]
