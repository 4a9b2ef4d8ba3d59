"""Real servers for the integration tests: ``echoforge wyoming`` and ``echoforge serve`` (espeak-ng),
as real processes (these tests are about the CLI entry points), started by ``tests/_servers.py``."""

from __future__ import annotations

import pytest
from _servers import ChildProcess, echoforge_cli, free_port, http_ready, tcp_ready

ESPEAK_ENV = {"ECHOFORGE_ENGINE": "espeak", "ECHOFORGE_SERVER__RATE_LIMIT_PER_MINUTE": "0"}


def start_cli(args: list[str], data_dir, ready, **env: str) -> ChildProcess:
    """``echoforge ARGS`` in ``data_dir`` (its data dir too), espeak-ng engine, started when ``ready()``."""
    extra = {**ESPEAK_ENV, "ECHOFORGE_DATA_DIR": str(data_dir), **env}
    return ChildProcess([*echoforge_cli(), *args], data_dir, env=extra).start(ready)


@pytest.fixture(scope="session")
def wyoming_server(tmp_path_factory):
    """``echoforge wyoming --uri tcp://127.0.0.1:PORT --engine espeak``; yields ``(uri, proc)``."""
    pytest.importorskip("wyoming")
    port = free_port()
    uri = f"tcp://127.0.0.1:{port}"
    proc = start_cli(["wyoming", "--uri", uri, "--engine", "espeak"], tmp_path_factory.mktemp("wyoming"), tcp_ready(port))
    yield uri, proc
    proc.stop()


@pytest.fixture(scope="session")
def echoforge_server(tmp_path_factory):
    """``echoforge serve`` with the espeak-ng engine; yields its ``http://`` base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_cli(["serve", "--host", "127.0.0.1", "--port", str(port)], tmp_path_factory.mktemp("serve"), http_ready(url))
    yield url
    proc.stop()
