"""Real servers for the integration tests: ``echoforge wyoming`` and ``echoforge serve`` (espeak-ng)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}
    env.update(
        ECHOFORGE_DATA_DIR=str(data_dir),
        ECHOFORGE_ENGINE="espeak",
        ECHOFORGE_SERVER__RATE_LIMIT_PER_MINUTE="0",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _echoforge() -> list[str]:
    exe = VENV_BIN / "echoforge"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "echoforge.cli"]


class Proc:
    """A child process with its log; ``ready()`` polls until it answers."""

    def __init__(self, args: list[str], data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "child.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, cwd=data_dir, env=child_env(data_dir), stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, probe, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if probe():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"not ready after {timeout} s:\n{self.log()[-4000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def wyoming_server(tmp_path_factory):
    """``echoforge wyoming --uri tcp://127.0.0.1:PORT --engine espeak``; yields ``(uri, proc)``."""
    pytest.importorskip("wyoming")
    port = free_port()
    uri = f"tcp://127.0.0.1:{port}"
    proc = Proc([*_echoforge(), "wyoming", "--uri", uri, "--engine", "espeak"], tmp_path_factory.mktemp("wyoming"))

    def listening() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    proc.wait_until(listening)
    yield uri, proc
    proc.stop()


@pytest.fixture(scope="session")
def echoforge_server(tmp_path_factory):
    """``echoforge serve`` with the espeak-ng engine; yields its ``http://`` base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc([*_echoforge(), "serve", "--host", "127.0.0.1", "--port", str(port)], tmp_path_factory.mktemp("serve"))

    def healthy() -> bool:
        try:
            return httpx.get(url + "/api/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    proc.wait_until(healthy, timeout=90)
    yield url
    proc.stop()
