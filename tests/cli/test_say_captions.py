"""`echoforge say TEXT -o out.wav --captions out.srt|.vtt`: captions of the words as spoken."""

from __future__ import annotations

import re

import pytest
import soundfile as sf
from typer.testing import CliRunner

from echoforge.cli import app

runner = CliRunner()
STAMP = r"(\d\d):(\d\d):(\d\d)[,.](\d{3})"


def _cues(text: str) -> list[tuple[float, float, list[str]]]:
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        for i, line in enumerate(lines):
            m = re.fullmatch(f"{STAMP} --> {STAMP}", line)
            if m:
                g = [int(x) for x in m.groups()]
                start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
                end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
                cues.append((start, end, lines[i + 1 :]))
    return cues


def test_say_writes_srt_captions_with_espeak_word_events(tmp_path):
    out, srt = tmp_path / "a.wav", tmp_path / "a.srt"
    text = "Hello there, this is EchoForge. It is 21 degrees today, and the sky is clear!"
    result = runner.invoke(app, ["say", text, "-o", str(out), "--captions", str(srt), "--engine", "espeak"])
    assert result.exit_code == 0, result.output
    assert "engine word events" in result.output
    audio, sr = sf.read(out, dtype="float32")
    body = srt.read_text()
    assert body.startswith("1\n00:00:00,")
    cues = _cues(body)
    assert [" ".join(c[2]) for c in cues] == [
        "Hello there, this is EchoForge.",
        "It is 21 degrees today, and the sky is clear!",
    ]
    assert all(len(line) <= 42 for c in cues for line in c[2]) and all(len(c[2]) <= 2 for c in cues)
    assert cues[0][0] < cues[0][1] <= cues[1][0] < cues[1][1] <= audio.size / sr + 0.01


def test_say_writes_vtt_captions_aligned_on_piper(tmp_path):
    pytest.importorskip("piper")
    out, vtt = tmp_path / "b.wav", tmp_path / "b.vtt"
    text = "Good morning, how are you today? The train leaves at seven in the evening."
    result = runner.invoke(app, ["say", text, "-o", str(out), "--captions", str(vtt), "--engine", "piper"])
    if "not installed" in result.output or "not found" in result.output:
        pytest.skip(result.output)
    assert result.exit_code == 0, result.output
    assert "aligned in" in result.output
    audio, sr = sf.read(out, dtype="float32")
    cues = _cues(vtt.read_text())
    assert vtt.read_text().startswith("WEBVTT\n\n")
    assert " ".join(" ".join(c[2]) for c in cues) == text
    assert all(a[1] <= b[0] for a, b in zip(cues, cues[1:], strict=False))
    assert cues[-1][1] <= audio.size / sr + 0.01


def test_say_refuses_a_captions_file_that_is_not_srt_or_vtt(tmp_path):
    result = runner.invoke(
        app, ["say", "hi", "-o", str(tmp_path / "x.wav"), "--captions", str(tmp_path / "x.txt"), "--engine", "espeak"]
    )
    assert result.exit_code == 1 and "--captions must end in .srt or .vtt" in result.output
    assert "Traceback" not in result.output
