"""Whisper with and without the notes' glossary: word error rate and time on spoken questions.

The labelled questions of ``tests/agent/data/kb_questions.json`` (plus a few small-talk lines) are
spoken by the bundled Piper voice (noise off: the same audio every run) and transcribed by the
agent's recogniser (faster-whisper tiny.en, int8, beam 1) two ways, interleaved per clip:

* ``none``: no prompt;
* ``glossary``: ``Glossary: EchoForge, CSM, …`` — the knowledge base's names and terms
  (:meth:`KnowledgeBase.glossary`), as the agent does by default (``agent.stt_glossary_from_notes``).

Word error rate over all clips (jiwer, lower-cased, punctuation and hyphens dropped), the clips
where a name of the notes was misspelled, and milliseconds per clip. Prints a table, appends a
section to BENCHMARKS.md (``--no-md`` to skip), ends with one JSON line.

    .venv/bin/python benchmarks/stt_glossary.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
EXTRA = ["Can I use Ollama as the language model?", "Which engine does EchoForge use when there is no GPU?",
         "Hello, how are you?", "Thanks, goodbye.", "What can you do?"]  # fmt: skip


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower().replace("-", " ")).split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-md", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()

    import jiwer

    from echoforge.agent.rag import Embedder, KnowledgeBase
    from echoforge.agent.stt import WhisperSTT
    from echoforge.audio import resample
    from echoforge.engines import SynthesisRequest
    from echoforge.engines.piper import PiperEngine, default_voice_path

    questions = [q["q"] for q in json.loads((ROOT / "tests/agent/data/kb_questions.json").read_text())["questions"]]
    texts = questions + EXTRA
    piper = PiperEngine(default_voice_path(), noise_scale=0.0, noise_w_scale=0.0)
    clips = [resample(piper.synthesize(SynthesisRequest(text=t)), piper.sample_rate, 16_000) for t in texts]
    with tempfile.TemporaryDirectory() as index:
        kb = KnowledgeBase(ROOT / "knowledge_base", index, Embedder())
        kb.build()
        glossary = kb.glossary()
    stt = WhisperSTT()
    stt.transcribe(clips[0])  # warm up
    prompts = {"none": [], "glossary": glossary}
    heard: dict[str, list[str]] = {k: [] for k in prompts}
    seconds = dict.fromkeys(prompts, 0.0)
    for clip in clips:
        for mode, terms in prompts.items():  # interleaved: both see the same machine load
            stt.set_glossary(terms)
            t = time.perf_counter()
            heard[mode].append(stt.transcribe(clip).text)
            seconds[mode] += time.perf_counter() - t
    names = {g.lower() for g in glossary}
    result = {}
    for mode in prompts:
        ref, hyp = [words(t) for t in texts], [words(h) for h in heard[mode]]
        missed = [
            (t, h) for t, h in zip(texts, heard[mode], strict=True)
            if any(n in words(t).split() and n not in words(h).split() for n in names)
        ]  # fmt: skip
        result[mode] = {
            "wer": round(jiwer.wer(ref, hyp), 4),
            "names_missed": len(missed),
            "misheard": missed,
            "ms_per_clip": round(1000 * seconds[mode] / len(clips), 1),
        }
    load = os.getloadavg()[0]
    table = "\n".join(
        ["| prompt | clips | word error rate | clips with a name of the notes misspelled | ms per clip |",
         "| --- | ---: | ---: | ---: | ---: |"]
        + [f"| {m} | {len(clips)} | **{r['wer'] * 100:.1f} %** | {r['names_missed']} | {r['ms_per_clip']} |" for m, r in result.items()]
    )  # fmt: skip
    print(table)
    for mode, r in result.items():
        for t, h in r["misheard"]:
            print(f"  {mode}: {t!r} -> {h!r}")
    if not args.no_md:
        section = (
            f"\n## Whisper's glossary of the notes' names — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
            f"`benchmarks/stt_glossary.py` on {platform.machine()}, {os.cpu_count()} cores (load average {load:.2f}): "
            f"the {len(questions)} labelled questions and {len(EXTRA)} more lines spoken by Piper (joe-us, noise off), "
            "transcribed by faster-whisper tiny.en (int8, beam 1) without a prompt and with "
            f"`Glossary: {', '.join(glossary)}.` (the knowledge base's names, `KnowledgeBase.glossary`), interleaved per clip.\n\n"
            f"{table}\n"
        )
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write(section)
    print(json.dumps({"benchmark": "stt_glossary", "glossary": glossary, "load_avg_1m": round(load, 2),
                      **{m: {k: v for k, v in r.items() if k != "misheard"} for m, r in result.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
