"""Word-timing accuracy and cost (issue 27): the aligners against espeak-ng's own word events.

Accuracy: every sentence of the evaluation set (``en_standard``) is spoken by espeak-ng through
its library, whose word events are the reference. The audio is then aligned to the text as if
the engine had no timings (what CSM and Piper get) and each word's start is compared with the
reference: median and p95 |start error|, and the share of words placed (not interpolated). The
sentences cycle through four espeak voices/paces; the DTW aligner's template is always ``en-us``
at a pace matched to the audio, so ``en-us ×1.0`` is its easiest case and is reported apart.
Words espeak-ng gives no event of its own (``the`` in "in the") are not in the reference.

Piper: the same aligner on the bundled Piper voice — words monotonic, non-overlapping, covering
the speech (first start / last end within 150 ms of the first / last sound) — and the cost:
alignment time / synthesis time, both warm, per sentence.

Prints tables, appends a section to BENCHMARKS.md (``--no-append`` to skip) and ends with one
JSON line. Targets: median ≤ 40 ms, p95 ≤ 120 ms, 100 % of words present; cost ≤ 25 %.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from echoforge.analysis.alignment import align_words
from echoforge.engines.base import SynthesisRequest
from echoforge.engines.espeak import EspeakEngine
from echoforge.engines.timing import DtwAligner, WhisperAligner, synthesize_timed

ROOT = Path(__file__).resolve().parents[1]
SET = ROOT / "echoforge" / "eval" / "sets" / "en_standard.yaml"
VARIANTS = [("en-us", 1.0), ("en-gb+f4", 1.0), ("en-us+f3", 1.25), ("en-gb", 0.8)]


def sentences(limit: int | None) -> list[str]:
    items = yaml.safe_load(SET.read_text())["sentences"]
    texts = [s if isinstance(s, str) else s["text"] for s in items]
    return texts[:limit] if limit else texts


def accuracy(texts: list[str], aligners: dict) -> dict:
    engine = EspeakEngine()
    errors: dict[str, dict[str, list[float]]] = {name: {} for name in aligners}
    present: dict[str, list[int]] = {name: [0, 0] for name in aligners}
    cost: dict[str, float] = dict.fromkeys(aligners, 0.0)
    synth_s = 0.0
    for k, text in enumerate(texts):
        voice, speed = VARIANTS[k % len(VARIANTS)]
        t0 = time.perf_counter()
        audio, truth = synthesize_timed(engine, SynthesisRequest(text=text, voice=voice, speed=speed))
        synth_s += time.perf_counter() - t0
        duration = audio.size / engine.sample_rate
        for name, aligner in aligners.items():
            t0 = time.perf_counter()
            words = align_words(text, aligner(audio, engine.sample_rate, text), duration)
            cost[name] += time.perf_counter() - t0
            assert [w["word"] for w in words] == text.split()
            present[name][0] += sum(not w["interpolated"] for w in words)
            present[name][1] += len(words)
            key = f"{voice} ×{speed:g}"
            errors[name].setdefault(key, []).extend(
                abs(w["start_s"] - t["start_s"]) for w, t in zip(words, truth, strict=True) if not t["interpolated"]
            )
    out = {}
    for name in aligners:
        every = [e for errs in errors[name].values() for e in errs]
        others = [e for key, errs in errors[name].items() if key != "en-us ×1" for e in errs]
        out[name] = {
            "words": len(every),
            "median_ms": round(float(np.median(every)) * 1000, 1),
            "p95_ms": round(float(np.percentile(every, 95)) * 1000, 1),
            "median_ms_other_voices": round(float(np.median(others)) * 1000, 1),
            "p95_ms_other_voices": round(float(np.percentile(others, 95)) * 1000, 1),
            "placed_pct": round(100.0 * present[name][0] / present[name][1], 1),
            "returned_pct": 100.0,
            "align_ms_per_sentence": round(1000 * cost[name] / len(texts), 1),
            "by_variant": {
                key: {
                    "median_ms": round(float(np.median(e)) * 1000, 1),
                    "p95_ms": round(float(np.percentile(e, 95)) * 1000, 1),
                }
                for key, e in errors[name].items()
            },
        }
    out["espeak_synth_ms_per_sentence"] = round(1000 * synth_s / len(texts), 1)
    return out


def piper_check(texts: list[str]) -> dict | None:
    try:
        from echoforge.engines.piper import PiperEngine, default_voice_path

        path = default_voice_path()
        if path is None:
            return None
        engine = PiperEngine(path)
    except Exception as exc:  # no Piper here: the section says so
        print(f"piper: skipped ({exc})")
        return None
    aligner = DtwAligner()
    engine.synthesize(SynthesisRequest(text="Warm up."))
    aligner(engine.synthesize(SynthesisRequest(text="Warm up.")), engine.sample_rate, "Warm up.")
    synth = align = 0.0
    ok = placed = total = 0
    gaps: list[float] = []
    for text in texts:
        t0 = time.perf_counter()
        audio = engine.synthesize(SynthesisRequest(text=text))
        t1 = time.perf_counter()
        words = align_words(text, aligner(audio, engine.sample_rate, text), audio.size / engine.sample_rate)
        t2 = time.perf_counter()
        synth += t1 - t0
        align += t2 - t1
        loud = np.flatnonzero(np.convolve(np.abs(audio), np.ones(220) / 220, mode="same") > 0.02)
        first, last = loud[0] / engine.sample_rate, loud[-1] / engine.sample_rate
        monotonic = all(a["start_s"] <= a["end_s"] <= b["start_s"] for a, b in zip(words, words[1:], strict=False))
        covers = abs(words[0]["start_s"] - first) <= 0.15 and abs(words[-1]["end_s"] - last) <= 0.15
        gaps += [abs(words[0]["start_s"] - first), abs(words[-1]["end_s"] - last)]
        ok += int(bool(monotonic and covers and len(words) == len(text.split())))
        placed += sum(not w["interpolated"] for w in words)
        total += len(words)
    return {
        "sentences": len(texts),
        "ok": ok,
        "placed_pct": round(100.0 * placed / total, 1),
        "edge_gap_ms_max": round(max(gaps) * 1000, 1),
        "synth_ms_per_sentence": round(1000 * synth / len(texts), 1),
        "align_ms_per_sentence": round(1000 * align / len(texts), 1),
        "cost_pct": round(100.0 * align / synth, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="first N sentences of the set (default: all)")
    ap.add_argument(
        "--whisper", action=argparse.BooleanOptionalAction, default=True, help="also measure the Whisper aligner"
    )
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    texts = sentences(args.limit)
    aligners = {"dtw": DtwAligner()}
    if args.whisper:
        aligners["whisper"] = WhisperAligner()
        aligners["whisper"](np.zeros(16_000, dtype=np.float32), 16_000, "warm up")  # load the model first
    acc = accuracy(texts, aligners)
    piper = piper_check(texts)
    lines = [
        "| aligner | words | median \\|start err\\| | p95 | other voices: median / p95 | placed | align ms / sentence |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in aligners:
        r = acc[name]
        lines.append(
            f"| {name} | {r['words']} | **{r['median_ms']} ms** | **{r['p95_ms']} ms** | "
            f"{r['median_ms_other_voices']} / {r['p95_ms_other_voices']} ms | {r['placed_pct']} % | {r['align_ms_per_sentence']} |"
        )
    variants = [
        "",
        "| aligner | " + " | ".join(acc["dtw"]["by_variant"]) + " |",
        "| --- |" + " ---: |" * len(acc["dtw"]["by_variant"]),
    ]
    for name in aligners:
        cells = [f"{v['median_ms']} / {v['p95_ms']}" for v in acc[name]["by_variant"].values()]
        variants.append(f"| {name} (median / p95 ms) | " + " | ".join(cells) + " |")
    piper_lines = []
    if piper:
        piper_lines = [
            "",
            "| Piper (DTW) | sentences | monotonic + covering | placed | first/last word vs sound, max | synth ms | align ms | cost |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| joe-medium | {piper['sentences']} | {piper['ok']} / {piper['sentences']} | {piper['placed_pct']} % | "
            f"{piper['edge_gap_ms_max']} ms | {piper['synth_ms_per_sentence']} | {piper['align_ms_per_sentence']} | **{piper['cost_pct']} %** |",
        ]
    table = "\n".join(lines + variants + piper_lines)
    print(table)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    if not args.no_append:
        section = (
            f"\n## Word timings — accuracy and cost — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (load average {load[0]:.1f}), Python {platform.python_version()}. "
            f"Command: `python benchmarks/word_timings.py{f' --limit {args.limit}' if args.limit else ''}"
            f"{'' if args.whisper else ' --no-whisper'}`. Reference: espeak-ng's own word events on the "
            f"{len(texts)} sentences of en_standard, spoken in four voices/paces ({', '.join(f'{v} ×{s:g}' for v, s in VARIANTS)}); "
            "each aligner sees only the audio and the text. espeak-ng itself needs no aligner (its events are "
            f"the timings, {acc['espeak_synth_ms_per_sentence']} ms per sentence synthesis). "
            "Targets (issue 27): median ≤ 40 ms, p95 ≤ 120 ms, 100 % of words present; alignment ≤ 25 % of synthesis time.\n\n"
            f"{table}\n"
        )
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write(section)
    print(json.dumps({"benchmark": "word_timings", "accuracy": acc, "piper": piper}))


if __name__ == "__main__":
    main()
