"""``echoforge serve`` itself (the `make serve` path): flags, the studio, a clean SIGTERM exit."""

from __future__ import annotations

import signal
import sys

import httpx
import openai
import pytest
from _servers import ChildProcess, http_ready
from conftest import free_port

pytestmark = pytest.mark.integration


def test_echoforge_serve_command(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "echoforge.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--engine", "espeak"]
    server = ChildProcess(args, tmp_path, env={"ECHOFORGE_DATA_DIR": str(tmp_path / "data")}, name="serve")
    server.start(http_ready(url))
    try:
        assert httpx.get(url + "/api/health").json()["engine"]["name"] == "espeak"
        with openai.OpenAI(base_url=url + "/v1", api_key="any", max_retries=0) as client:
            audio = client.audio.speech.create(model="csm-1b", voice="alloy", input="Served by the CLI.")
        assert len(audio.content) > 1000  # mp3 by default
    finally:
        returncode = server.stop(timeout=60)  # SIGTERM
    out = server.log()
    # uvicorn re-raises the signal after a complete graceful shutdown
    assert returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out and "worker pool" in out
    assert "FALLBACK" in out  # the fallback engine is announced loudly
