"""The CLI as a user runs it: `echoforge say` makes real speech; errors are one clean line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from echoforge.cli import app
from echoforge.eval.wer import wer

runner = CliRunner()


def test_say_writes_intelligible_speech(tmp_path, transcribe):
    out = tmp_path / "hi.wav"
    # The real console script, as in the README.
    proc = subprocess.run(
        [sys.executable, "-m", "echoforge.cli", "say", "Hello from EchoForge", "-o", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    audio, sr = sf.read(out, dtype="float32")
    assert sr in (22_050, 24_000) and audio.size > sr * 0.5
    assert np.sqrt(np.mean(audio**2)) > 0.01
    # Whisper writes the made-up word as "Echo Forge"; score against that spelling.
    assert wer("Hello from Echo Forge", transcribe(audio, sr)) <= 0.2


@pytest.mark.parametrize("suffix", ["mp3", "flac", "ogg"])
def test_say_formats_and_stream(tmp_path, suffix):
    out = tmp_path / f"x.{suffix}"
    result = runner.invoke(app, ["say", "Testing one two three.", "-o", str(out), "--engine", "espeak", "--stream"])
    assert result.exit_code == 0, result.output
    from echoforge.audio import load_audio

    audio, _ = load_audio(out)
    assert audio.size > 0
    assert "first audio after" in result.output


def test_say_speaks_a_text_longer_than_the_configured_audio_limit_in_full(tmp_path, monkeypatch):
    """The audio cap follows from the text (it was the fixed 90 s limit); made cheap with a 1 s limit."""
    from echoforge.text import speech_seconds

    monkeypatch.setenv("ECHOFORGE_GENERATION__MAX_AUDIO_LENGTH_MS", "1000")
    text = "The first sentence is here. The second one follows it. A third one closes this short text."
    assert speech_seconds(text) > 4
    out = tmp_path / "long.wav"
    result = runner.invoke(app, ["say", text, "-o", str(out), "--engine", "espeak"])
    assert result.exit_code == 0, result.output
    audio, sr = sf.read(out, dtype="float32")
    assert audio.size / sr > 3.0  # the old code cut it at the 1 s limit
    # An explicit --max-ms is still the caller's own cap.
    result = runner.invoke(app, ["say", text, "-o", str(out), "--engine", "espeak", "--max-ms", "1000"])
    assert result.exit_code == 0, result.output
    audio, sr = sf.read(out, dtype="float32")
    assert audio.size / sr <= 1.0


def test_say_rejects_bad_input_cleanly(tmp_path):
    result = runner.invoke(app, ["say", "   ", "-o", str(tmp_path / "x.wav"), "--engine", "espeak"])
    assert result.exit_code == 1
    assert "text must be a non-empty string" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["say", "hi", "-o", str(tmp_path / "x.xyz"), "--engine", "espeak"])
    assert result.exit_code == 1 and "unknown audio format" in result.output
    result = runner.invoke(app, ["say", "hi", "--engine", "bogus"])
    assert result.exit_code == 2 and "engine" in result.output


def test_bad_config_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "echoforge.yaml").write_text("server:\n  port: -5\n")
    result = runner.invoke(app, ["engines"])
    assert result.exit_code == 2
    assert "server.port" in result.output and "Traceback" not in result.output


def test_engines_and_doctor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["engines"])
    assert result.exit_code == 0 and "piper" in result.output and "espeak" in result.output
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0
    for word in ("torch", "CSM weights", "espeak-ng", "ffmpeg"):
        assert word in result.output
