"""``echoforge serve`` itself (the `make serve` path): flags, the studio, a clean SIGTERM exit."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import openai
from conftest import child_env, free_port


def test_echoforge_serve_command(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "echoforge.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--engine",
            "espeak",
        ],
        env=child_env(ECHOFORGE_DATA_DIR=str(tmp_path / "data")),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(url + "/api/health").json()["engine"]["name"] == "espeak"
        with openai.OpenAI(base_url=url + "/v1", api_key="any", max_retries=0) as client:
            audio = client.audio.speech.create(model="csm-1b", voice="alloy", input="Served by the CLI.")
        assert len(audio.content) > 1000  # mp3 by default
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    # uvicorn re-raises the signal after a complete graceful shutdown
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out and "worker pool" in out
    assert "FALLBACK" in out  # the fallback engine is announced loudly
