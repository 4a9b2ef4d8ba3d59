"""Per-update latency of the incremental analyzer (target ≤ 30 ms on a 2-core CPU).

Feeds a Piper/espeak sentence repeated to ~20 s in 80 ms chunks (one Mimi frame each) and
times every :meth:`StreamAnalyzer.push` that runs an update. Prints a table, appends a section
to BENCHMARKS.md, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from echoforge.analysis.stream import MIMI_FRAME_S, StreamAnalyzer
from echoforge.audio import load_audio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--update-every", type=int, default=16)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(path), "The quick brown fox jumps over the lazy dog. " * 3], check=True)
        audio, sr = load_audio(path, target_sr=24_000)
    audio = np.tile(audio, int(np.ceil(args.seconds * sr / audio.size)))[: int(args.seconds * sr)]
    analyzer = StreamAnalyzer(sr, update_every=args.update_every)
    step = int(MIMI_FRAME_S * sr)
    times = []
    for i in range(0, audio.size, step):
        t0 = time.perf_counter()
        if analyzer.push(audio[i : i + step]) is not None:
            times.append((time.perf_counter() - t0) * 1000)
    p50, p95 = np.percentile(times, 50), np.percentile(times, 95)
    row = {"updates": len(times), "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "max_ms": round(float(max(times)), 2)}
    print(f"| updates | p50 | p95 | max |\n|---|---|---|---|\n| {row['updates']} | {p50:.1f} ms | {p95:.1f} ms | {row['max_ms']:.1f} ms |")
    if not args.no_append:
        section = (
            f"\n## Analysis — incremental analyzer latency — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
            f"Command: `python benchmarks/analysis_speed.py --seconds {args.seconds:g} --update-every {args.update_every}` "
            f"(update every {args.update_every} Mimi frames over a 3 s window; target ≤ 30 ms).\n\n"
            f"| updates | p50 | p95 | max |\n|---|---|---|---|\n| {row['updates']} | {p50:.1f} ms | {p95:.1f} ms | {row['max_ms']:.1f} ms |\n"
        )
        with open(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", "a") as f:
            f.write(section)
    print(json.dumps({"benchmark": "analysis_speed", **row}))


if __name__ == "__main__":
    main()
