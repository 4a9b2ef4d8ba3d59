"""The built-in watermark: inaudible, survives lossy codecs and streaming, absent from clean audio."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from echoforge.audio import encode, load_audio, resample, save_audio
from echoforge.cli import app
from echoforge.csm import watermark

SR = 24_000


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = tmp_path_factory.mktemp("wm") / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog while the server streams audio to every client."
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    audio, sr = load_audio(path)
    return resample(audio, sr, SR)


def snr_db(clean, marked):
    return 10 * np.log10(np.sum(clean**2) / np.sum((marked - clean) ** 2))


def test_mark_is_quiet_and_detected(speech):
    marked = watermark.apply(speech, SR)
    assert marked.shape == speech.shape and marked.dtype == np.float32
    assert snr_db(speech, marked) >= 24
    assert watermark.detect(marked, SR).detected
    clean = watermark.detect(speech, SR)
    assert not clean.detected and clean.score < watermark.THRESHOLD


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_survives_lossy_reencode(speech, fmt):
    marked = watermark.apply(speech, SR)
    decoded, sr = load_audio(encode(marked, SR, fmt))
    assert watermark.detect(decoded, sr).detected
    plain, sr = load_audio(encode(speech, SR, fmt))
    assert not watermark.detect(plain, sr).detected


def test_wrong_key_and_noise_are_not_detected(speech):
    marked = watermark.apply(speech, SR, key="private-key")
    assert watermark.detect(marked, SR, key="private-key").detected
    assert not watermark.detect(marked, SR).detected  # public key does not find a private mark
    noise = np.random.default_rng(0).normal(0, 0.1, SR * 4).astype(np.float32)
    assert not watermark.detect(noise, SR).detected


def test_streamed_chunks_line_up(speech):
    parts, offset = [], 0
    for size in [3840] + [15360] * 10:
        chunk = speech[offset : offset + size]
        if chunk.size == 0:
            break
        parts.append(watermark.apply(chunk, SR, offset=offset))
        offset += chunk.size
    assert watermark.detect(np.concatenate(parts), SR).detected


def test_keeps_tensor_type_and_judges_short_clips_honestly(speech):
    marked = watermark.apply(torch.from_numpy(speech.copy()), SR)
    assert isinstance(marked, torch.Tensor) and marked.shape == (speech.size,)
    short = watermark.detect(speech[: SR // 2], SR)
    assert not short.detected and "shorter" in short.note


def test_cli_detect_and_apply(speech, tmp_path):
    runner = CliRunner()
    src = save_audio(tmp_path / "clean.wav", speech, SR)
    out = tmp_path / "marked.mp3"
    assert runner.invoke(app, ["watermark", "apply", str(src), str(out)]).exit_code == 0
    result = runner.invoke(app, ["watermark", "detect", str(out)])
    assert result.exit_code == 0 and "watermark detected" in result.output
    result = runner.invoke(app, ["watermark", "detect", str(src)])
    assert "no watermark detected" in result.output
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    result = runner.invoke(app, ["watermark", "detect", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output
