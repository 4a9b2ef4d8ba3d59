"""The evaluation suite end to end on real speech (Piper, espeak-ng, a tiny CSM) with real Whisper."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from echoforge.config import load_settings
from echoforge.engines.piper import PiperEngine, default_voice_path
from echoforge.eval.metrics import token_probe
from echoforge.eval.rendering import Utterance
from echoforge.eval.sets import load_set
from echoforge.eval.suite import run_suite

ROOT = Path(__file__).resolve().parents[2]


def _subset(tmp_path, n_turns: int = 3) -> Path:
    """A small slice of en_standard (a plain, a numbers and a homograph sentence + one dialogue)."""
    full = load_set("en_standard")
    by_cat = {}
    for item in full["sentences"]:
        by_cat.setdefault(item["category"], item)
    conv = full["conversations"][0]
    small = {"name": "standard-slice", "reference": full["reference"],
             "sentences": [by_cat["plain"], by_cat["numbers"], by_cat["homographs"]],
             "voices": conv["voices"], "conversations": [{"name": conv["name"], "turns": conv["turns"][:n_turns]}]}  # fmt: skip
    (tmp_path / "slice.yaml").write_text(yaml.safe_dump(small, allow_unicode=True))
    return tmp_path / "slice.yaml"


def test_fallbacks_and_noise_control(tmp_path, asr):
    """Piper and espeak on a slice of en_standard, with the noise control: real speaker similarity
    (Resemblyzer), per-category WER, homographs, the noise control flagged and ranked last."""
    # Piper draws its noise inside the ONNX graph, unseeded: with the voice's noise the WER of the
    # same text moves from run to run. Noise off makes the engine's audio (and so the WER) fixed.
    piper = PiperEngine(default_voice_path(), noise_scale=0.0, noise_w_scale=0.0)
    report = run_suite([("piper", piper), "espeak"], _subset(tmp_path), tmp_path / "out", load_settings(), asr=asr,
                       codec=None, controls=("noise",))  # fmt: skip
    names = [r["engine"] for r in report["results"]]
    assert names[-1] == "noise (control)" and sorted(names[:2]) == ["espeak", "piper"]
    by = {r["engine"]: r for r in report["results"]}
    assert by["noise (control)"]["flags"] and not by["piper"]["flags"] and not by["espeak"]["flags"]
    assert by["noise (control)"]["metrics"]["signal"]["noise"] == 6
    for name in ("piper", "espeak"):
        m = by[name]["metrics"]
        assert m["wer"] <= 0.15, [(u["text"], u["hypothesis"]) for u in by[name]["utterances"] if u["wer"] > 0]
        assert set(m["wer_by_category"]) == {"plain", "numbers", "homographs", "dialogue"}
        assert m["n"]["wer"] == 6 and m["n"]["speaker_sim"] == 3 and m["n"]["homograph_acc"] == 1
        assert m["speaker_sim"] > 0.6 and m["consistency"] > 0.6
        assert m["rtf"] > 0 and m["ttfa_s"] > 0  # measured and reported (their size is the machine's)
    assert by["piper"]["metrics"]["single_voice"] and math.isnan(by["piper"]["metrics"]["separation"])
    assert by["espeak"]["metrics"]["separation"] > 0.05  # en-us vs en-us+f3
    enc = report["speaker_encoder"]
    assert report["speaker_backend"] == "resemblyzer"
    assert enc["same"] > enc["different_engine"] + 0.2 and enc["same"] > enc["pitch_shifted"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["engine"] for r in saved["results"]] == names and "_speaker" not in saved["results"][0]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "piper (fallback)" in md and "WER by category" in md and "insufficient data (n=3<10)" in md
    assert "output is noise" in md and "speaker embedding: **resemblyzer**" in md


def test_csm_against_fallbacks_is_ranked(tmp_path, asr):
    """A tiny random CSM (babble) next to Piper: both evaluated, CSM ranked below on WER; a missing
    engine is reported as unavailable and listed last."""
    from echoforge.eval.smoke import write_tiny_csm  # the `echoforge data tiny-model` recipe

    model = write_tiny_csm(tmp_path / "csm")
    # Short texts: the random CSM never emits EOS, so each utterance runs to its budget.
    tiny_set = {"name": "tiny", "reference": {"speaker": 0, "text": "Hello there."}, "sentences": ["Good morning to you."],
                "conversation": {"turns": [{"speaker": 0, "emotion": "happy", "text": "Thank you."},
                                           {"speaker": 1, "emotion": "calm", "text": "You are welcome."}]}}  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_set))
    settings = load_settings(
        csm={"model": str(model), "watermark": False}, piper={"voice": str(tmp_path / "nope.onnx")}
    )
    report = run_suite(["csm", "espeak", "piper"], tmp_path / "tiny.yaml", tmp_path / "out", settings, asr=asr,
                       codec=str(model), temperature=0.0)  # fmt: skip
    names = [r["engine"] for r in report["results"]]
    assert (
        names[-1] == "piper"
        and not report["results"][-1]["available"]
        and "not found" in report["results"][-1]["error"]
    )
    by = {r["engine"]: r for r in report["results"]}
    assert by["csm"]["is_fallback"] is False and by["espeak"]["is_fallback"] is True
    assert by["csm"]["metrics"]["wer"] > by["espeak"]["metrics"]["wer"]
    # Random weights babble: flagged (noise / unintelligible) and ranked after espeak.
    assert by["csm"]["flags"] and not by["espeak"]["flags"] and by["csm"]["rank"] > by["espeak"]["rank"]
    # The token probe ran on Mimi codes of espeak's words (CSM babble has no recognised words).
    pm = by["espeak"]["metrics"]
    assert pm["probe_n"] >= 4 and 0 <= pm["probe_acc"] <= 1 and 0 < pm["probe_uniform"] <= 1
    assert pm["n"]["probe_acc"] == pm["probe_n_test"] < 100  # far too little data to mean anything
    assert "probe_acc" in by["csm"]["metrics"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "unavailable" in md and "uniform chance" in md and "codec's view of that engine's audio" in md
    assert "accuracy insufficient data" in md


def test_token_probe_learns_when_tokens_carry_the_next_word():
    """Codebook-0 tokens that encode the current word make the next word predictable (probe ~1,
    majority baseline much lower); tokens without information stay near the baseline."""
    follows = {"red": "apple", "green": "pear", "blue": "plum", "apple": "pie", "pear": "jam", "plum": "cake"}
    token = {w: i + 1 for i, w in enumerate(sorted(set(follows) | set(follows.values())))}
    sr = 24_000
    utts = []
    rng = np.random.default_rng(0)
    for i in range(24):
        first = ["red", "green", "blue"][i % 3]
        words = [first, follows[first], follows[follows[first]]]
        audio = np.concatenate([np.full(int(0.4 * sr), token[w] / 100, np.float32) for w in words])
        u = Utterance("sentence", " ".join(words), 0, audio, sr, 0.1, 0.1)
        u.words = [(w, 0.4 * j, 0.4 * (j + 1)) for j, w in enumerate(words)]
        utts.append(u)

    class AmplitudeCodec:  # stands in for Mimi: one token per 80 ms frame = amplitude * 100
        codebook_size = 64

        def __init__(self, informative: bool):
            self.informative = informative

        def encode(self, audio):
            x = (
                audio.numpy().reshape(-1, 1920)[:, 0]
                if audio.numel() % 1920 == 0
                else audio.numpy()[: audio.numel() // 1920 * 1920].reshape(-1, 1920)[:, 0]
            )
            tok = np.round(x * 100).astype(int) if self.informative else rng.integers(1, 60, size=x.size)
            import torch

            return torch.from_numpy(np.stack([tok] * 32, 1))

    good = token_probe(utts, AmplitudeCodec(True))
    assert good["probe_acc"] > 0.95 and good["probe_baseline"] < 0.5 and good["probe_n"] == 48
    assert good["probe_classes"] == 6 and good["probe_uniform"] == 1 / 6 and good["probe_n_test"] == 24
    noise = token_probe(utts, AmplitudeCodec(False))
    assert noise["probe_acc"] < good["probe_acc"] - 0.3


def test_cli_reports_why_no_engine_ran(tmp_path):
    from typer.testing import CliRunner

    from echoforge.cli import app

    with pytest.raises(ValueError, match="not found"):
        load_set("nope")
    res = CliRunner().invoke(app, ["eval", "--engine", "nope-engine", "--set", "en_quick", "--out", str(tmp_path),
                                   "--codec", "none", "--no-controls"])  # fmt: skip
    assert res.exit_code == 1 and "no engine could be evaluated (nope-engine:" in res.output
    assert "Traceback" not in res.output
    assert "unavailable" in (tmp_path / "report.md").read_text()
    res = CliRunner().invoke(app, ["eval", "--engine", "espeak", "--control", "static", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown control 'static'" in res.output
