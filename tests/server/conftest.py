"""Real servers on loopback for the server tests: a uvicorn subprocess per configuration."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The test process's env without ECHOFORGE_* (tests pass settings explicitly)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class ServerProcess:
    """``python serve_app.py`` on a free port; logs go to ``log_path``."""

    def __init__(
        self,
        data_dir: Path,
        engine: str = "espeak",
        settings: dict | None = None,
        env: dict | None = None,
        log_level: str | None = None,
    ) -> None:
        self.log_level = log_level
        self.data_dir = Path(data_dir)
        self.engine = engine
        self.settings = {"data_dir": str(self.data_dir), **(settings or {})}
        self.settings.setdefault("server", {}).setdefault("rate_limit_per_minute", 0)
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        spec = json.dumps(
            {"port": self.port, "engine": self.engine, "settings": self.settings, "log_level": self.log_level}
        )
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve_app.py"), spec],
            cwd=self.data_dir,  # no stray echoforge.yaml from the repo root
            env=child_env(**self.env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kw)


def wait_task(client: httpx.Client, task_id: str, timeout: float = 60.0, until=("done", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/api/tasks/{task_id}").json()
        if task["status"] in until:
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} still {task['status']} after {timeout} s")


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
    """The main server: espeak-ng fallback engine, no auth, no rate limit."""
    server = ServerProcess(tmp_path_factory.mktemp("espeak-server"), "espeak", {"server": {"workers": 2}}).start()
    yield server
    server.stop()


@pytest.fixture()
def api(espeak_server):
    with espeak_server.client() as client:
        yield client
