"""The one way the suite starts servers: in-process apps, and real processes where the process matters.

- :class:`AppServer` — ``create_app(...)`` served by uvicorn on a thread of the test process, on a
  free loopback port. Real sockets (httpx, WebSockets, the official ``openai`` client, Chromium all
  work), no interpreter start, no import of the whole stack again: the default for tests that are
  not about the process itself. Takes an engine *instance* or name (fakes welcome).
- :class:`ChildProcess` — any command (``echoforge serve``, ``echoforge wyoming``, uvicorn …) with
  its log file and a readiness probe; :class:`ServerProcess` is the EchoForge server from
  ``tests/server/serve_app.py`` with settings as JSON. Kept for what only a process can show:
  kill -9 and restart, SIGTERM draining, the CLI, separate workers.

Readiness is polled (``http_ready`` / ``tcp_ready``) against a generous deadline, never slept on:
how fast the machine is changes how long a start takes, not whether a test passes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SERVE_APP = TESTS / "server" / "serve_app.py"
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 180.0
_LOGGERS = ("", "uvicorn", "uvicorn.access")  # root (echoforge.* propagates to it) and uvicorn's own  # a deadline for a busy 2-core box, not an expectation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The test process's env without ECHOFORGE_* (tests pass settings explicitly), offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def echoforge_cli() -> list[str]:
    """The installed ``echoforge`` entry point (or ``python -m echoforge.cli`` without one)."""
    exe = VENV_BIN / "echoforge"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "echoforge.cli"]


def http_ready(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return httpx.get(url + "/api/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def tcp_ready(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    return probe


class _Server:
    url: str

    def client(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 120.0)
        return httpx.Client(base_url=self.url, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 20.0) -> int | None:  # pragma: no cover - overridden
        raise NotImplementedError


class ChildProcess(_Server):
    """``args`` run in ``data_dir`` with :func:`child_env`; stdout+stderr to ``data_dir/<name>.log``."""

    def __init__(self, args: list[str], data_dir: Path, *, env: dict[str, str] | None = None, name: str = "child"):
        self.args = args
        self.data_dir = Path(data_dir)
        self.env = env or {}
        self.log_path = self.data_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, ready: Callable[[], bool], timeout: float = START_TIMEOUT_S):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        # cwd=data_dir: no stray echoforge.yaml / .env from the repo root.
        self.proc = subprocess.Popen(
            self.args, cwd=self.data_dir, env=child_env(**self.env), stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"{self.args[0]} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.args[0]} not ready within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class ServerProcess(ChildProcess):
    """``python tests/server/serve_app.py '<json>'``: the real app in its own process.

    ``engine`` is a registered name (``espeak``, ``sine``, ``espeak_probe`` …); ``settings`` are
    :func:`load_settings` overrides. Rate limits are off unless a test sets them.
    """

    def __init__(
        self,
        data_dir: Path,
        engine: str = "espeak",
        settings: dict | None = None,
        env: dict | None = None,
        log_level: str | None = None,
    ) -> None:
        self.engine = engine
        self.settings = _test_settings(data_dir, settings)
        self.log_level = log_level
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        spec = json.dumps({"port": self.port, "engine": engine, "settings": self.settings, "log_level": log_level})
        super().__init__([sys.executable, str(SERVE_APP), spec], data_dir, env=env, name=f"server-{self.port}")

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:  # type: ignore[override]
        return super().start(http_ready(self.url), timeout)


def _test_settings(data_dir: Path, settings: dict | None) -> dict:
    out = {"data_dir": str(data_dir), **(settings or {})}
    out.setdefault("server", {}).setdefault("rate_limit_per_minute", 0)
    return out


class AppServer(_Server):
    """``create_app(settings, engine=…)`` on a uvicorn thread of this process, on a free port.

    ``engine`` is an engine instance (a fake, a tiny CSM …) or a registered name; ``settings`` are
    :func:`load_settings` overrides (``data_dir`` defaults to ``data_dir``). ``stop()`` runs the app's
    shutdown (lifespan) like a SIGTERM would.
    """

    def __init__(self, data_dir: Path, engine: Any = "espeak", settings: dict | None = None, **app_kw: Any) -> None:
        from echoforge.config import load_settings

        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = load_settings(**_test_settings(self.data_dir, settings))
        self.engine = engine
        self.app_kw = app_kw
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        self._server = None

    def start(self, timeout: float = START_TIMEOUT_S) -> AppServer:
        from echoforge.server.app import create_app

        kw = dict(self.app_kw)
        if isinstance(self.engine, str):
            kw["engine_name"] = self.engine
        else:
            kw["engine"] = self.engine
        app = create_app(self.settings, **kw)
        self.app = app
        # The app's log (echoforge.* via the root logger, uvicorn's own loggers do not propagate),
        # tracebacks included, for tests that read it like a process's log file.
        self._log = io.StringIO()
        self._log_handler = logging.StreamHandler(self._log)
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        for name in _LOGGERS:
            logging.getLogger(name).addHandler(self._log_handler)
        try:
            self._server, self._thread = start_uvicorn(app, self.port, timeout, lifespan="on", timeout_graceful_shutdown=10)
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        """What the app logged while it ran (this process's loggers: other tests' lines may be in it)."""
        return self._log.getvalue() if getattr(self, "_log", None) is not None else ""

    @property
    def services(self) -> Any:
        """The running app's services (engine, synthesis, queue …) for white-box assertions."""
        return self.app.state.services

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._server is not None and self._thread is not None:
            stop_uvicorn(self._server, self._thread, timeout)
            self._server = None
        if getattr(self, "_log_handler", None) is not None:
            for name in _LOGGERS:
                logging.getLogger(name).removeHandler(self._log_handler)
        return 0


def start_uvicorn(app: Any, port: int, timeout: float = START_TIMEOUT_S, **config: Any) -> tuple[Any, threading.Thread]:
    """Serve ``app`` (any ASGI app) with uvicorn on a daemon thread on ``127.0.0.1:port``;
    returns ``(server, thread)`` once it accepts connections."""
    import uvicorn

    config.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    error: list[BaseException] = []

    def serve() -> None:
        try:
            server.run()
        except BaseException as exc:  # surfaced below
            error.append(exc)

    thread = threading.Thread(target=serve, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"in-process server did not start: {error[0] if error else 'exited'!r}")
        if time.monotonic() > deadline:
            stop_uvicorn(server, thread)
            raise RuntimeError(f"in-process server not started within {timeout:.0f} s")
        time.sleep(0.05)
    return server, thread


def stop_uvicorn(server: Any, thread: threading.Thread, timeout: float = 30.0) -> None:
    """Ask the server to shut down (its lifespan shutdown runs), then force it after ``timeout``."""
    server.should_exit = True
    thread.join(timeout)
    if thread.is_alive():
        server.force_exit = True
        thread.join(10)


@contextmanager
def uvicorn_thread(app: Any, **config: Any) -> Iterator[tuple[str, Any]]:
    """``with uvicorn_thread(app) as (url, server):`` — any ASGI app on a free loopback port."""
    port = free_port()
    server, thread = start_uvicorn(app, port, **config)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        stop_uvicorn(server, thread)


def wait_until(predicate: Callable[[], Any], timeout: float = 120.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); a deadline, not a timing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s")


def wait_task(client: httpx.Client, task_id: str, timeout: float = 300.0, until=("done", "failed", "cancelled")) -> dict:
    """Poll ``/api/tasks/{id}`` until its status is in ``until``."""
    last: dict = {}

    def finished() -> dict | None:
        nonlocal last
        last = client.get(f"/api/tasks/{task_id}").json()
        return last if last.get("status") in until else None

    try:
        return wait_until(finished, timeout, f"task {task_id} in {until}")
    except AssertionError:
        raise AssertionError(f"task {task_id} still {last.get('status')} after {timeout:.0f} s") from None
