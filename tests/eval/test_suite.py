"""The evaluation suite end to end on real speech (Piper, espeak-ng, a tiny CSM) with real Whisper."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from echoforge.config import load_settings
from echoforge.eval.speaker import cosine, embed_speaker
from echoforge.eval.suite import Utterance, load_set, rank, run_suite, token_probe

ROOT = Path(__file__).resolve().parents[2]


def test_fallback_engines_on_en_quick(tmp_path, asr):
    report = run_suite(["piper", "espeak"], "en_quick", tmp_path, load_settings(), asr=asr, codec=None)
    by = {r["engine"]: r for r in report["results"]}
    assert set(by) == {"piper", "espeak"} and sorted(r["rank"] for r in report["results"]) == [1, 2]
    for name in ("piper", "espeak"):
        m = by[name]["metrics"]
        assert m["wer"] <= 0.10, [(u["text"], u["hypothesis"]) for u in by[name]["utterances"] if u["wer"] > 0]
        assert 0 < m["rtf"] < 5 and 0 < m["ttfa_s"] < 10
        assert -1 <= m["speaker_sim"] <= 1 and -1 <= m["consistency"] <= 1 and not math.isnan(m["separation"])
        assert m["emotion_method"] and "emotion_score" in m
        kinds = [u["kind"] for u in by[name]["utterances"]]
        assert kinds.count("sentence") == 5 and kinds.count("turn") == 4
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [r["engine"] for r in saved["results"]] == [r["engine"] for r in report["results"]]
    md = (tmp_path / "report.md").read_text()
    assert "| 1 |" in md and "| 2 |" in md and "piper (fallback)" in md


def test_csm_against_fallbacks_is_ranked(tmp_path, asr):
    """A tiny random CSM (babble) next to Piper: both evaluated, CSM ranked below on WER; a missing
    engine is reported as unavailable and listed last."""
    sys.path.insert(0, str(ROOT))
    from tests.csm.tiny_models import build_tiny_csm

    model = build_tiny_csm(tmp_path / "csm")
    # Short texts: the random CSM never emits EOS, so each utterance runs to its budget.
    tiny_set = {"name": "tiny", "reference": {"speaker": 0, "text": "Hello there."}, "sentences": ["Good morning to you."],
                "conversation": {"turns": [{"speaker": 0, "emotion": "happy", "text": "Thank you."},
                                           {"speaker": 1, "emotion": "calm", "text": "You are welcome."},
                                           {"speaker": 0, "emotion": "sad", "text": "See you."}]}}  # fmt: skip
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
    assert by["espeak"]["ranks"]["wer"] == 1 and by["csm"]["ranks"]["wer"] == 2
    # The token probe ran on Mimi codes of espeak's words (CSM babble has no recognised words).
    assert by["espeak"]["metrics"]["probe_n"] >= 4 and 0 <= by["espeak"]["metrics"]["probe_acc"] <= 1
    assert "probe_acc" in by["csm"]["metrics"]
    assert "unavailable" in (tmp_path / "out" / "report.md").read_text()


def test_rank_orders_by_mean_rank():
    def res(name, wer, sim, cons, rtf):
        return {
            "engine": name,
            "available": True,
            "metrics": {"wer": wer, "speaker_sim": sim, "consistency": cons, "rtf": rtf},
        }

    ranked = rank([res("a", 0.30, 0.9, 0.9, 0.1), res("b", 0.05, 0.8, 0.8, 0.5), res("c", 0.05, 0.95, 0.95, 0.05),
                   {"engine": "d", "available": False, "error": "x"}])  # fmt: skip
    assert [r["engine"] for r in ranked] == ["c", "a", "b", "d"]
    assert ranked[0]["ranks"]["wer"] == 1.5  # tie with b
    assert [r.get("rank") for r in ranked] == [1, 2, 3, None]


def test_speaker_embedding_separates_voices():
    from echoforge.engines import SynthesisRequest, create_engine

    settings = load_settings()
    piper, espeak = create_engine(settings, "piper"), create_engine(settings, "espeak")
    texts = ["Good morning, how are you today?", "The children were playing in the garden."]
    p = [embed_speaker(piper.synthesize(SynthesisRequest(text=t)), piper.sample_rate) for t in texts]
    e = [embed_speaker(espeak.synthesize(SynthesisRequest(text=t, voice="en-us")), espeak.sample_rate) for t in texts]
    assert cosine(p[0], p[1]) > cosine(p[0], e[0]) + 0.1
    assert cosine(e[0], e[1]) > cosine(e[1], p[1]) + 0.1


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
    noise = token_probe(utts, AmplitudeCodec(False))
    assert noise["probe_acc"] < good["probe_acc"] - 0.3


def test_bundled_sets_and_cli(tmp_path, monkeypatch):
    for name in ("en_basic", "en_quick"):
        s = load_set(name)
        assert len(s["sentences"]) >= 5 and {t["speaker"] for t in s["conversation"]["turns"]} == {0, 1}
    with pytest.raises(ValueError, match="not found"):
        load_set("nope")
    from typer.testing import CliRunner

    from echoforge.cli import app

    res = CliRunner().invoke(
        app, ["eval", "--engine", "nope-engine", "--set", "en_quick", "--out", str(tmp_path), "--codec", "none"]
    )
    assert res.exit_code == 1 and "no engine could be evaluated" in res.output
    assert "unavailable" in (tmp_path / "report.md").read_text()
