"""Realtime API latency: end of the user's speech → first ``response.output_audio.delta``.

A real ``echoforge serve`` (its own process, Piper fallback engine, embedded LLM, the shipped
notes) and the official ``openai`` SDK's realtime client, as a user has them. Each turn is a
question about ``knowledge_base/`` spoken by the server's own ``/v1/audio/speech`` (24 kHz PCM,
the Realtime format), streamed with ``input_audio_buffer.append`` at real-time pace like a
microphone (20 ms per event by default, ``--chunk-ms``), then silence until the answer ends; server VAD ends the turn.

``end of speech`` is when the question's last audible sample was "spoken" (stream start + its
position); the figure is the wall time from there to the first audio delta received, so it
includes the VAD's ``silence_duration_ms`` — what the user waits. One warm-up turn is not
counted. Prints a table, appends a section to BENCHMARKS.md (``--no-md`` to skip) and ends with
one JSON line. Not a test: the numbers depend on the machine and its load.

    .venv/bin/python benchmarks/realtime_latency.py --turns 8
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from agent_latency import QUESTIONS, pct  # noqa: E402  (one list of questions for both agent benchmarks)

RATE = 24_000
# The agent's own stage times (Prometheus, GET /metrics): summed over turns, so per turn = the change.
STAGE_SUM = re.compile(r'^echoforge_agent_stage_seconds_sum\{stage="(\w+)"\} (\S+)$', re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, engine: str, max_tokens: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}
    env.update(
        ECHOFORGE_ENGINE=engine,
        ECHOFORGE_DATA_DIR=str(data_dir),
        ECHOFORGE_LOG_LEVEL="WARNING",
        ECHOFORGE_SERVER__RATE_LIMIT_PER_MINUTE="0",
        ECHOFORGE_AGENT__KNOWLEDGE_BASE=str(ROOT / "knowledge_base"),
        ECHOFORGE_AGENT__USE_ANALYSIS="false",
        ECHOFORGE_AGENT__LLM_TEMPERATURE="0",
        ECHOFORGE_AGENT__LLM_MAX_TOKENS=str(max_tokens),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    exe = Path(sys.executable).parent / "echoforge"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "echoforge.cli"]
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen([*cmd, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=data_dir, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(data_dir / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready within 300 s")


def agent_stage_sums(url: str) -> dict[str, float]:
    try:
        text = httpx.get(url + "/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    return {stage: float(value) for stage, value in STAGE_SUM.findall(text)}


def speech_end(pcm: bytes) -> int:
    """Index of the last sample louder than -40 dBFS (Piper ends with a short silence)."""
    samples = np.abs(np.frombuffer(pcm, "<i2").astype(np.float32)) / 32768
    loud = np.flatnonzero(samples > 0.01)
    return int(loud[-1]) + 1 if loud.size else samples.size


def one_turn(conn, question_pcm: bytes, chunk_ms: int) -> dict:
    """Stream the question at real-time pace, then silence until ``response.done``."""
    end = speech_end(question_pcm)
    chunk = RATE * chunk_ms // 1000  # samples per append event
    done = threading.Event()
    t0 = time.monotonic()

    def mic() -> None:
        silence = bytes(2 * chunk)
        k = 0
        while not done.is_set():
            start = k * chunk * 2
            piece = question_pcm[start : start + chunk * 2] if start < len(question_pcm) else silence
            # A microphone delivers a chunk once it has been recorded.
            time.sleep(max(0.0, t0 + (k + 1) * chunk / RATE - time.monotonic()))
            conn.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
            k += 1

    sender = threading.Thread(target=mic, daemon=True)
    sender.start()
    t_end = t0 + end / RATE
    first = heard = answer = None
    try:
        for event in conn:
            if event.type == "conversation.item.input_audio_transcription.completed":
                heard = event.transcript
            elif event.type == "response.output_audio.delta" and first is None:
                first = time.monotonic()
            elif event.type == "response.done":
                answer = event.response.output[0].content[0].transcript if event.response.output else ""
                break
            elif event.type == "error":
                raise RuntimeError(event.error.message)
    finally:
        done.set()
        sender.join()
    return {"heard": heard, "answer": answer, "speech_end_to_first_audio_s": None if first is None else first - t_end}


def run(args: argparse.Namespace) -> dict:
    from openai import OpenAI

    with tempfile.TemporaryDirectory(prefix="realtime-bench-") as tmp:
        proc, url = start_server(Path(tmp), args.engine, args.max_tokens)
        try:
            client = OpenAI(base_url=url + "/v1", api_key="sk-local", timeout=300)
            t = time.perf_counter()
            with client.realtime.connect(model="echoforge") as conn:
                assert next(iter(conn)).type == "session.created"
                load_s = time.perf_counter() - t
                questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns + 1)]
                rows = []
                for i, question in enumerate(questions):
                    pcm = client.audio.speech.create(
                        model="tts-1", voice="alloy", input=question, response_format="pcm"
                    ).content
                    before = agent_stage_sums(url)
                    row = {"question": question, **one_turn(conn, pcm, args.chunk_ms)}
                    after = agent_stage_sums(url)
                    row["agent_stages_s"] = {k: round(v - before.get(k, 0.0), 4) for k, v in after.items()}
                    row["agent_v2v_s"] = row["agent_stages_s"].get("voice_to_voice")
                    if i == 0:
                        print(f"warm-up: {question!r} → {row['answer']!r}")
                        continue
                    rows.append(row)
                    v = row["speech_end_to_first_audio_s"]
                    print(f"turn {i}: heard {row['heard']!r} → {str(row['answer'])[:70]!r} first audio {v:.3f} s")
            health = httpx.get(url + "/api/health", timeout=10).json()
        finally:
            proc.terminate()
            proc.wait(30)
    engine = health.get("engine") or {}
    values = [r["speech_end_to_first_audio_s"] for r in rows if r["speech_end_to_first_audio_s"] is not None]
    agent = [r["agent_v2v_s"] for r in rows if r["agent_v2v_s"] is not None]
    return {
        "benchmark": "realtime_latency",
        "engine": f"{engine.get('name')} ({engine.get('sample_rate')} Hz)",
        "turns": len(rows),
        "max_tokens": args.max_tokens,
        "chunk_ms": args.chunk_ms,
        "first_connection_s": round(load_s, 2),
        "speech_end_to_first_audio": {"p50": pct(values, 50), "p95": pct(values, 95), "n": len(values)},
        "agent_voice_to_voice": {"p50": pct(agent, 50), "p95": pct(agent, 95), "n": len(agent)},
        "rows": rows,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def table(result: dict) -> str:
    fmt = lambda x: "–" if x is None else f"{x * 1000:.0f}"  # noqa: E731
    lines = [
        "| question | heard | first audio delta (ms) | agent's own voice-to-voice (ms) |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['question']} | {r['heard']} | {fmt(r['speech_end_to_first_audio_s'])} | {fmt(r['agent_v2v_s'])} |"
        )
    s, a = result["speech_end_to_first_audio"], result["agent_voice_to_voice"]
    lines.append(f"| **p50 / p95** | | **{fmt(s['p50'])} / {fmt(s['p95'])}** | {fmt(a['p50'])} / {fmt(a['p95'])} |")
    return "\n".join(lines)


def append_md(result: dict, path: Path, date: str | None = None, note: str = "") -> None:
    date = date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## Realtime API latency ({date})\n\n"
        f"`benchmarks/realtime_latency.py --turns {result['turns']}` on {result['machine']} (CPU only, shared; load "
        f"average {result['load_avg_1m']} at the end): a real `echoforge serve` with engine `{result['engine']}`, "
        f"the embedded LLM (max {result['max_tokens']} tokens, greedy), Whisper tiny.en, the shipped notes; the "
        f"official `openai` SDK's realtime client streams each spoken question at real-time pace ({result['chunk_ms']} ms "
        f"`input_audio_buffer.append` events, server VAD). Milliseconds from the end of the question's speech to the "
        f"first `response.output_audio.delta` received (VAD silence included), next to the agent's own "
        f"voice-to-voice time for the same turn (its Prometheus histogram, from its estimate of the end of speech to "
        f"its first audio chunk out); one warm-up turn not counted.\n\n"
        + table(result)
        + "\n\n"
        + (note + "\n" if note else "")
    )
    with path.open("a", encoding="utf-8") as f:
        f.write(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--engine", default="piper", help="the server's TTS engine (piper, espeak, csm)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--chunk-ms", type=int, default=20, help="audio per append event (a browser worklet: 20-40 ms)")
    parser.add_argument("--no-md", action="store_true", help="do not append to BENCHMARKS.md")
    parser.add_argument("--date", default=None, help="date for the BENCHMARKS.md heading (default: now)")
    parser.add_argument("--note", default="", help="a sentence appended under the table")
    args = parser.parse_args()
    result = run(args)
    print()
    print(table(result))
    if not args.no_md:
        append_md(result, ROOT / "BENCHMARKS.md", args.date, args.note)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
