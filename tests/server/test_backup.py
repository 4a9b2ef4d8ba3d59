"""``echoforge backup`` / ``echoforge restore``: voices, tasks, keys and config survive a round trip."""

from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
import pytest
from typer.testing import CliRunner

from echoforge.audio import encode
from echoforge.cli import app
from echoforge.server.services.auth import ApiKeyStore
from echoforge.server.services.queue import SQLiteTaskQueue
from echoforge.server.services.voices import VoiceStore


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECHOFORGE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "echoforge.yaml").write_text("server:\n  port: 9123\n")
    return tmp_path


def _populate(data):
    t = np.arange(16000) / 16000
    voice = VoiceStore(data).create(
        name="Backed Up",
        audio=encode((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000, "wav"),
        transcript="hello",
    )
    queue = SQLiteTaskQueue(data)
    task = queue.enqueue("generate", {"text": "keep me", "voice": voice.id}, "wav")
    pending = queue.enqueue("generate", {"text": "still queued"}, "wav")
    queue.claim("w", timeout=0.1)
    queue.complete(task.id, b"RIFFdata", {"audio_s": 1.0})
    queue.close()
    key, _ = ApiKeyStore(data).create("backup-test")
    return voice, task, pending, key


def test_round_trip(home):
    data = home / "data"
    voice, task, pending, key = _populate(data)
    runner = CliRunner()
    result = runner.invoke(app, ["backup", str(home / "backup.tar.gz"), "--results"])
    assert result.exit_code == 0, result.output
    shutil.rmtree(data)
    (home / "echoforge.yaml").unlink()

    result = runner.invoke(app, ["restore", str(home / "backup.tar.gz")])
    assert result.exit_code == 0, result.output
    store = VoiceStore(data)
    restored = store.get(voice.id)
    assert restored.name == "Backed Up" and restored.transcript == "hello" and restored.audio_path.is_file()
    queue = SQLiteTaskQueue(data)
    assert queue.get(task.id).status == "done" and queue.result(task.id) == b"RIFFdata"
    assert queue.get(pending.id).status == "queued"
    queue.close()
    assert ApiKeyStore(data).verify(key) is not None
    assert "9123" in (home / "echoforge.yaml").read_text()

    # restoring over existing data needs --force
    again = runner.invoke(app, ["restore", str(home / "backup.tar.gz")])
    assert again.exit_code != 0 and "--force" in again.output
    assert runner.invoke(app, ["restore", str(home / "backup.tar.gz"), "--force"]).exit_code == 0


def test_restore_rejects_unsafe_archives(home):
    evil = home / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    result = CliRunner().invoke(app, ["restore", str(evil)])
    assert result.exit_code != 0 and "unsafe" in result.output
    assert not (home.parent / "outside.txt").exists()
    (home / "junk.tar.gz").write_bytes(b"not a tarball")
    result = CliRunner().invoke(app, ["restore", str(home / "junk.tar.gz")])
    assert result.exit_code != 0 and "not an EchoForge backup" in result.output
