"""Shared helpers for the docs tests: the docs' tested code blocks, and a real server for them.

A block is tested when the line before its opening fence is an HTML comment (invisible in the
rendered page):

    <!-- test: cli -->      run as it is, no server (bash or python)
    <!-- test: server -->   run against a real `echoforge serve` on a free loopback port

Blocks run in a scratch directory with ``.venv/bin`` first on ``PATH`` and the espeak-ng
fallback engine; ``http://127.0.0.1:8000`` in a block is replaced by the test server's address.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from _servers import ChildProcess, echoforge_cli, free_port, http_ready

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
VENV_BIN = Path(sys.executable).parent
MARKER = re.compile(r"^(\s*)<!--\s*test:\s*(cli|server)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\w+)?\s*$")


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    kind: str  # cli | server
    lang: str  # bash | python
    code: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def collect_blocks() -> list[Block]:
    blocks: list[Block] = []
    for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = MARKER.match(lines[i])
            if not m:
                i += 1
                continue
            fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            assert fence and fence.group(2) in ("bash", "python"), f"{path}:{i + 1}: a test marker must precede a ```bash or ```python block"
            body = []
            j = i + 2
            while j < len(lines) and not (FENCE.match(lines[j]) and FENCE.match(lines[j]).group(2) is None):
                body.append(lines[j])
                j += 1
            assert j < len(lines), f"{path}:{i + 2}: unclosed code block"
            blocks.append(Block(str(path.relative_to(DOCS if path.is_relative_to(DOCS) else ROOT)), i + 2, m.group(2), fence.group(2), textwrap.dedent("\n".join(body)) + "\n"))
            i = j + 1
    return blocks


def example_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHOFORGE_", "OPENAI_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        ECHOFORGE_ENGINE="espeak",
        ECHOFORGE_DATA_DIR=str(tmp / "data"),
        ECHOFORGE_LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


@pytest.fixture(scope="session")
def docs_server(tmp_path_factory):
    """A real ``echoforge serve`` (espeak-ng engine, as the docs show it) on a free loopback port."""
    pytest.importorskip("echoforge.server.app")
    tmp = tmp_path_factory.mktemp("docs-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in example_env(tmp).items() if k.startswith(("ECHOFORGE_", "PYTHONPATH"))}
    env["ECHOFORGE_SERVER__RATE_LIMIT_PER_MINUTE"] = "0"
    server = ChildProcess([*echoforge_cli(), "serve", "--host", "127.0.0.1", "--port", str(port)], tmp, env=env, name="server")
    with server.start(http_ready(url)):
        yield url
