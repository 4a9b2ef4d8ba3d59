"""The evaluation's metrics and sanity gates, computed on rendered utterances (:mod:`echoforge.eval.rendering`).

Speaker similarity and cross-turn consistency, homograph accuracy, emotional continuity (a
prosodic arousal proxy), the Mimi token probe and the speaker-encoder check, with the sample
sizes under which a metric reads "insufficient data" (:data:`MIN_N`) and the thresholds that
flag an engine. :mod:`echoforge.eval.suite` says what each metric means.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from echoforge.analysis.prosody import basic_prosody
from echoforge.analysis.speaker import backend_name, cosine, embed_speaker
from echoforge.audio import resample
from echoforge.csm.rates import FRAME_RATE, SAMPLE_RATE
from echoforge.eval.quality import check_signal
from echoforge.eval.rendering import Utterance
from echoforge.eval.wer import normalize_for_wer

AROUSAL = {
    "calm": 0.2,
    "sad": 0.25,
    "neutral": 0.5,
    "happy": 0.7,
    "surprised": 0.8,
    "excited": 0.9,
    "angry": 0.95,
    "fearful": 0.8,
}


# Below these sample sizes a metric reads "insufficient data" (and is left out of the ranking).
MIN_N = {
    "wer": 10,  # utterances
    "wer_category": 5,  # utterances per category
    "speaker_sim": 10,  # sentences compared with the reference
    "consistency": 6,  # same-speaker turn pairs
    "separation": 6,  # same- and cross-speaker pairs, each
    "homograph_acc": 8,  # homograph items
    "emotion_score": 6,  # turns with a requested emotion
    "probe_acc": 100,  # test examples of the token probe
    "rtf": 1,
}


UNINTELLIGIBLE_WER = 0.90  # an engine at or above this WER is flagged


BAD_SIGNAL_SHARE = 0.5  # flagged when more than this share of its utterances is noise/silence


PITCH_SHIFT_SEMITONES = 4.0


def speaker_metrics(utts: list[Utterance], emb: dict[int, np.ndarray] | None = None,
                    single_voice: bool = False) -> dict[str, Any]:  # fmt: skip
    """SIM of sentences to the reference; same-speaker consistency / separation within each dialogue.

    ``single_voice``: the engine spoke both parts with one voice (a fallback without a second
    voice in the set), so there is nothing to separate and ``separation`` is NaN.
    """
    emb = emb if emb is not None else {id(u): embed_speaker(u.audio, u.sample_rate) for u in utts if u.audio.size}
    ref = next((u for u in utts if u.kind == "reference" and id(u) in emb), None)
    sims = [cosine(emb[id(u)], emb[id(ref)]) for u in utts if u.kind == "sentence" and id(u) in emb] if ref else []
    turns = [u for u in utts if u.kind == "turn" and id(u) in emb]
    same, cross = [], []
    for i in range(len(turns)):
        for j in range(i + 1, len(turns)):
            a, b = turns[i], turns[j]
            if a.dialogue != b.dialogue:
                continue
            s = cosine(emb[id(a)], emb[id(b)])
            (same if a.speaker == b.speaker else cross).append(s)
    out: dict[str, Any] = {
        "speaker_sim": float(np.mean(sims)) if sims else math.nan,
        "consistency": float(np.mean(same)) if same else math.nan,
        "cross_speaker": float(np.mean(cross)) if cross else math.nan,
        "separation": (float(np.mean(same)) - float(np.mean(cross))) if same and cross and not single_voice else math.nan,
        "single_voice": single_voice,
    }
    out["_n"] = {"speaker_sim": len(sims), "consistency": len(same), "separation": 0 if single_voice else min(len(same), len(cross))}
    return out


def _words(text: str) -> list[str]:
    return normalize_for_wer(text).split()


def homograph_correct(item: dict[str, Any], hypothesis: str) -> bool:
    """An accepted form of the homograph is in the transcript and no rejected form is (unless the
    rejected word is also in the sentence itself)."""
    hyp = set(_words(hypothesis))
    ref = set(_words(item["text"]))
    accept = {w.lower() for w in item.get("accept") or [item["homograph"]]}
    reject = {w.lower() for w in item.get("reject") or []} - ref
    return bool(hyp & accept) and not (hyp & reject)


def _spearman(a: list[float], b: list[float]) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def emotion_metrics(utts: list[Utterance]) -> dict[str, Any]:
    """Requested vs. perceived arousal across the dialogue turns (prosodic proxy)."""
    turns = [u for u in utts if u.kind == "turn" and u.emotion and u.audio.size]
    if len(turns) < 3:
        return {"emotion_method": "n/a", "emotion_score": math.nan, "_n": {"emotion_score": len(turns)}}
    feats = np.stack([basic_prosody(u.audio, u.sample_rate, u.text) for u in turns])  # [n, 7]
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    measured = (z[:, 2] + z[:, 5] + z[:, 1]) / 3  # loudness + pitch variability + speaking rate
    requested = [AROUSAL.get((u.emotion or "neutral").lower(), 0.5) for u in turns]
    return {
        "emotion_method": "prosodic arousal proxy (Spearman)",
        "emotion_score": _spearman(requested, measured.tolist()),
        "_n": {"emotion_score": len(turns)},
    }


def token_probe(utts: list[Utterance], codec: Any, epochs: int = 200, seed: int = 0) -> dict[str, Any]:
    """Linear probe: bag of codebook-0 tokens of word *i* -> word *i+1* (see module docstring).

    Returns accuracy with the majority-class and uniform chance levels and the sample sizes;
    ``probe_acc`` is computed whenever there is anything to test, and :data:`MIN_N` decides
    whether the report calls it meaningful.
    """
    examples = []  # (utterance index, histogram, next word)
    vocab = int(getattr(codec, "codebook_size", 2048))
    for ui, u in enumerate(x for x in utts if x.kind in ("sentence", "turn") and x.words):
        codes = codec.encode(torch.from_numpy(resample(u.audio, u.sample_rate, SAMPLE_RATE))).cpu().numpy()[:, 0]  # [F]
        words = [(normalize_for_wer(w), s, e) for w, s, e in u.words]
        words = [w for w in words if w[0]]
        for (_, s, e), (nxt, _, _) in zip(words, words[1:], strict=False):
            frames = codes[int(s * FRAME_RATE) : max(int(s * FRAME_RATE) + 1, int(math.ceil(e * FRAME_RATE)))]
            hist = np.bincount(np.clip(frames, 0, vocab - 1), minlength=vocab).astype(np.float32)
            examples.append((ui, hist / max(hist.sum(), 1), nxt))
    train = [e for e in examples if e[0] % 2 == 0]
    test = [e for e in examples if e[0] % 2 == 1]
    out: dict[str, Any] = {"probe_acc": math.nan, "probe_baseline": math.nan, "probe_uniform": math.nan,
                           "probe_n": len(examples), "probe_n_train": len(train), "probe_n_test": len(test),
                           "probe_classes": 0, "_n": {"probe_acc": len(test)}}  # fmt: skip
    if len(train) < 4 or not test:
        return out
    classes = sorted({e[2] for e in train})
    idx = {w: i for i, w in enumerate(classes)}
    x = torch.tensor(np.stack([e[1] for e in train]))
    y = torch.tensor([idx[e[2]] for e in train])
    torch.manual_seed(seed)
    probe = torch.nn.Linear(vocab, len(classes))
    opt = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x * vocab**0.5), y).backward()
        opt.step()
    with torch.no_grad():
        pred = probe(torch.tensor(np.stack([e[1] for e in test])) * vocab**0.5).argmax(-1).tolist()
    acc = float(np.mean([classes[p] == e[2] for p, e in zip(pred, test, strict=True)]))
    majority = max(classes, key=lambda c: sum(e[2] == c for e in train))
    out.update(probe_acc=acc, probe_baseline=float(np.mean([e[2] == majority for e in test])),
               probe_uniform=1.0 / len(classes), probe_classes=len(classes))  # fmt: skip
    return out


def finite_mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else math.nan


def speaker_material(utts: list[Utterance], emb: dict[int, np.ndarray]) -> dict[str, Any]:
    """What the cross-engine encoder check needs: sentence embeddings (speech only), and the
    reference's embedding unshifted and pitch-shifted."""
    sents = [emb[id(u)] for u in utts if u.kind == "sentence" and id(u) in emb and u.signal == "speech"]
    ref = next((u for u in utts if u.kind == "reference" and u.audio.size), None)
    shifted = None
    if ref is not None and check_signal(ref.audio, ref.sample_rate).verdict == "speech":
        f = 2 ** (PITCH_SHIFT_SEMITONES / 12)  # resampling raises pitch and formants (a different-sounding voice)
        shifted = embed_speaker(resample(ref.audio, int(round(ref.sample_rate * f)), ref.sample_rate), ref.sample_rate)
    return {"sentences": sents, "shifted": shifted}


def encoder_check(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Same voice vs different voice on this run's audio: same-engine sentence pairs must score
    above cross-engine pairs and above each voice's pitch-shifted copy."""
    mats = [(r["engine"], r.get("_speaker") or {}) for r in results if r.get("available") and not r.get("flags")]
    same, cross, shifted = [], [], []
    for i, (_, m) in enumerate(mats):
        s = m.get("sentences") or []
        same += [cosine(s[a], s[b]) for a in range(len(s)) for b in range(a + 1, len(s))]
        if m.get("shifted") is not None:
            shifted += [cosine(m["shifted"], e) for e in s]
        for _, m2 in mats[i + 1 :]:
            cross += [cosine(a, b) for a in s for b in m2.get("sentences") or []]
    out: dict[str, Any] = {"backend": backend_name(), "same": finite_mean(same), "n_same": len(same),
                           "different_engine": finite_mean(cross), "n_different_engine": len(cross),
                           "pitch_shifted": finite_mean(shifted), "n_pitch_shifted": len(shifted)}  # fmt: skip
    checks = []
    if same and cross:
        checks.append(out["same"] > out["different_engine"])
    if same and shifted:
        checks.append(out["same"] > out["pitch_shifted"])
    out["verdict"] = "insufficient data" if not checks or len(same) < 10 else ("pass" if all(checks) else "FAIL")
    return out
