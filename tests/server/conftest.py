"""Server-test fixtures. Servers come from ``tests/_servers.py`` (the one way the suite starts them):
``AppServer`` in-process for API behaviour, ``ServerProcess`` where the process itself matters."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from _servers import AppServer, ServerProcess, child_env, free_port, wait_task, wait_until  # noqa: F401 (re-exported)

from echoforge.engines import register_engine

HERE = Path(__file__).parent
ROOT = HERE.parents[1]

# The deterministic test engines, for in-process servers too (serve_app.py registers them in children).
register_engine("sine", "sine_engine:SineEngine.from_settings")
register_engine("espeak_probe", "probe_engine:ProbeEspeakEngine.from_settings")


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    """The response is an OpenAI-shaped error with ``status``."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


@pytest.fixture(scope="session")
def espeak_server(tmp_path_factory):
    """The main server: the real app with the espeak-ng fallback engine, no auth, no rate limit,
    in this process (uvicorn thread on a loopback port)."""
    server = AppServer(tmp_path_factory.mktemp("espeak-server"), "espeak", {"server": {"workers": 2}}).start()
    yield server
    server.stop()


@pytest.fixture()
def api(espeak_server):
    with espeak_server.client() as client:
        yield client
