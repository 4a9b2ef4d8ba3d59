"""The evaluation report: engines ranked (unflagged first, by mean rank over :data:`RANKED`) and
the Markdown page (``report.md``) with each metric's sample size."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from echoforge.eval.metrics import MIN_N, PITCH_SHIFT_SEMITONES, UNINTELLIGIBLE_WER

# (metric, higher is better) used for the overall ranking.
RANKED = (("wer", False), ("speaker_sim", True), ("consistency", True), ("rtf", False))


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
