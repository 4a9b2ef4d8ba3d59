"""`echoforge converse` renders a script with per-speaker prompts, turns fed back as context."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

from echoforge.csm.prompt import PromptBuilder


def test_converse_with_tiny_csm(tiny_csm_dir, tmp_path, monkeypatch, prompt_audio):
    from echoforge.cli import app

    sf.write(tmp_path / "a.wav", prompt_audio.numpy(), 24_000)
    sf.write(tmp_path / "b.wav", prompt_audio.numpy()[::-1].copy(), 24_000)
    (tmp_path / "script.yaml").write_text(
        "speakers:\n"
        "  0: {prompt: a.wav, transcript: hello world}\n"
        "  1: {prompt: b.wav, transcript: good morning}\n"
        "turns:\n"
        "  - {speaker: 0, text: how are you today}\n"
        "  - {speaker: 1, text: i am fine thanks}\n"
        "max_audio_length_ms: 400\n"
        "pause_ms: 100\n"
    )
    contexts = []
    real = PromptBuilder.build

    def spy(self, text, speaker, context, max_frames):
        contexts.append([(s.speaker, s.text) for s in context])
        return real(self, text, speaker, context, max_frames)

    monkeypatch.setattr(PromptBuilder, "build", spy)
    monkeypatch.setenv("ECHOFORGE_CSM__MODEL", str(tiny_csm_dir))
    monkeypatch.setenv("ECHOFORGE_CSM__WATERMARK", "false")
    out = tmp_path / "out.wav"
    res = CliRunner().invoke(
        app, ["converse", str(tmp_path / "script.yaml"), "-o", str(out), "--engine", "csm", "--temperature", "0"]
    )
    assert res.exit_code == 0, res.output
    audio, sr = sf.read(out)
    assert sr == 24_000
    assert audio.size == 2 * 5 * 1920 + 2400  # two 5-frame turns and one 100 ms pause
    # Turn 2 sees both speaker prompts and turn 1 as context.
    assert contexts[1] == [(0, "hello world"), (1, "good morning"), (0, "how are you today")]
    assert np.abs(audio).max() > 0
