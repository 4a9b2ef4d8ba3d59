"""``echoforge agent --input-file`` (a WAV as the microphone) and ``echoforge kb build|query``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from echoforge.cli import app

runner = CliRunner()


def last_json(output: str) -> dict:
    """The last JSON line (progress bars on stderr may share the captured text: cut at the brace)."""
    line = [line for line in output.splitlines() if "{" in line][-1]
    return json.loads(line[line.index("{"):])


@pytest.mark.integration
def test_kb_build_and_query(kb_dirs, tmp_path, monkeypatch):
    kb, _ = kb_dirs
    monkeypatch.setenv("ECHOFORGE_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["kb", "build", "--kb", str(kb)])
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    assert sorted(report["added"]) == ["bread.txt", "server.md", "telescope.pdf"]
    assert (tmp_path / "data" / "kb_index" / "index.faiss").is_file()
    again = last_json(runner.invoke(app, ["kb", "build", "--kb", str(kb)]).output)
    assert again["embedded_chunks"] == 0
    result = runner.invoke(app, ["kb", "query", "How big is the Zephyr telescope mirror?", "--kb", str(kb), "--json"])
    data = last_json(result.output)
    assert data["relevant"] and data["passages"][0]["source"] == "telescope.pdf"
    data = last_json(runner.invoke(app, ["kb", "query", "Sing me a song about pirates", "--kb", str(kb), "--json"]).output)
    assert data["fallback"] is True
    result = runner.invoke(app, ["kb", "build", "--kb", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "not found" in result.output


@pytest.mark.integration
def test_kb_calibrate_suggests_a_threshold(kb_dirs, tmp_path, monkeypatch):
    kb, _ = kb_dirs
    monkeypatch.setenv("ECHOFORGE_DATA_DIR", str(tmp_path / "data"))
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"questions": [
        {"q": "what port does the server use", "source": "server.md"},
        {"q": "how long do I bake the loaf", "source": "bread.txt"},
        {"q": "how big is the telescope mirror", "source": "telescope.pdf"},
        {"q": "who won the world cup in 1998", "source": None},
        {"q": "what is the capital of australia", "source": None},
    ]}))  # fmt: skip
    result = runner.invoke(app, ["kb", "calibrate", str(questions), "--kb", str(kb)])
    assert result.exit_code == 0, result.output
    data = last_json(result.output)
    assert data["recall_at_k"] == 1.0 and data["balanced_accuracy"] == 1.0 and 0 < data["threshold"] < 1


@pytest.mark.integration
def test_agent_with_input_and_output_files(kb_dirs, say, tmp_path, monkeypatch):
    kb, _ = kb_dirs
    monkeypatch.setenv("ECHOFORGE_DATA_DIR", str(tmp_path / "data"))
    wav, out = tmp_path / "question.wav", tmp_path / "answer.wav"
    sf.write(wav, np.concatenate([np.zeros(4000, np.float32), say("What port does the server use?")]), 16_000)
    result = runner.invoke(
        app,
        ["agent", "--input-file", str(wav), "--output-file", str(out), "--engine", "espeak", "--kb", str(kb),
         "--max-tokens", "24", "--fast", "--plain"],
    )
    assert result.exit_code == 0, result.output
    summary = last_json(result.output)
    assert summary["engine"] == "espeak" and len(summary["turns"]) == 1 and summary["turns"][0]["text"]
    assert summary["latency"][0]["voice_to_voice_s"] > 0
    audio, sr = sf.read(out)
    assert sr == 22_050 and audio.size / sr > 0.5 and np.abs(audio).max() > 0.1
    assert "state: speaking" in result.output


def test_agent_without_portaudio_fails_clearly():
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pass
    else:  # a machine with a working PortAudio would open the real microphone
        import pytest

        pytest.skip("PortAudio is installed here")
    result = runner.invoke(app, ["agent", "--engine", "espeak"])
    assert result.exit_code == 1
    assert "PortAudio" in result.output and "--input-file" in result.output
