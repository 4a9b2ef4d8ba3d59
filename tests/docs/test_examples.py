"""The code examples in the docs run as written: the real CLI, a real server, real clients."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from .conftest import VENV_BIN, Block, collect_blocks, example_env

pytestmark = pytest.mark.integration

BLOCKS = collect_blocks()
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".opus", ".ogg", ".aac", ".pcm"}


def test_the_docs_have_tested_examples():
    kinds = {(b.kind, b.lang) for b in BLOCKS}
    assert ("cli", "bash") in kinds and ("server", "bash") in kinds and ("server", "python") in kinds
    files = {b.file for b in BLOCKS}
    assert {"quickstart.md", "openai.md", "guide/cli.md"} <= files


def _prepare(block: Block, base_url: str | None) -> str:
    code = block.code.replace(".venv/bin/", f"{VENV_BIN}/")
    if base_url is not None:
        code = code.replace("http://127.0.0.1:8000", base_url)
    return code


def _check_audio_outputs(cwd: Path) -> None:
    for path in cwd.iterdir():
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        data = path.read_bytes()
        assert len(data) > 1000, f"{path.name} is nearly empty ({len(data)} bytes)"
        assert not data.lstrip().startswith(b'{"error"'), f"{path.name} holds an error body: {data[:200]!r}"
        if path.suffix.lower() in (".wav", ".flac"):
            audio, sr = sf.read(str(path), dtype="float32")
            assert sr >= 8000 and audio.size > sr // 4, f"{path.name}: {audio.size} samples at {sr} Hz"
            assert float(np.sqrt(np.mean(np.square(audio)))) > 1e-3, f"{path.name} is silent"


@pytest.mark.integration
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_example_runs(block: Block, tmp_path: Path, request):
    base_url = request.getfixturevalue("docs_server") if block.kind == "server" else None
    if block.lang == "python" and "from openai import" in block.code:
        pytest.importorskip("openai")
    if block.lang == "bash" and re.search(r"\bcurl\b", block.code) and shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    code = _prepare(block, base_url)
    env = example_env(tmp_path)
    if block.lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    else:
        script = tmp_path / "example.py"
        script.write_text(code, encoding="utf-8")
        cmd = [sys.executable, str(script)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{block.id} failed ({proc.returncode}):\n{code}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    # curl -s prints error bodies instead of failing: no example may answer with an API error.
    assert '"error": {' not in proc.stdout and '"error":{' not in proc.stdout, f"{block.id} got an API error:\n{proc.stdout[-2000:]}"
    _check_audio_outputs(tmp_path)
