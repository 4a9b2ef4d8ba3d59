"""Server load benchmark: N concurrent clients against a real EchoForge server on loopback.

Starts ``echoforge serve`` (fresh data dir, chosen engine) on a free port, then measures

1. streaming speech (``POST /v1/audio/speech``, WAV, chunked): requests/s and time to first
   byte (p50/p95) with N concurrent clients;
2. the task API: N clients submit tasks concurrently and poll them to completion — every
   task must finish (``lost`` must be 0);
3. with ``--compare N``: N speech requests at once against the same N one after another.

``--tiny-csm`` serves a tiny random-weight CSM (built with ``tests/csm/tiny_models.build_tiny_csm``,
CPU, ``--csm-slots`` scheduler slots, every request exactly ``--max-audio-ms`` of audio): the real
CSM path (scheduler, streaming, voice prompts) without downloads.

Prints a table and one JSON line, and appends a section to BENCHMARKS.md (``--no-write`` to skip).

    .venv/bin/python benchmarks/server_load.py --clients 8 --requests 5 --engine espeak
    .venv/bin/python benchmarks/server_load.py --tiny-csm --clients 64 --requests 1 --compare 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Thanks for calling. Your order has shipped and should arrive on Thursday."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_server(
    engine: str, workers: int, data_dir: Path, fallback_concurrency: int | None = None, extra_env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}
    env.update(
        ECHOFORGE_DATA_DIR=str(data_dir),
        ECHOFORGE_SERVER__RATE_LIMIT_PER_MINUTE="0",
        ECHOFORGE_SERVER__QUEUE_MAX_PENDING="10000",
        ECHOFORGE_SERVER__WORKERS=str(workers),
        ECHOFORGE_LOG_LEVEL="WARNING",
    )
    if fallback_concurrency:
        env["ECHOFORGE_SERVER__FALLBACK_CONCURRENCY"] = str(fallback_concurrency)
    env.update(extra_env or {})
    cmd = [
        sys.executable,
        "-m",
        "echoforge.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--engine",
        engine,
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


async def speech_load(url: str, clients: int, per_client: int) -> dict:
    ttfb: list[float] = []
    totals: list[float] = []
    errors = 0

    async def one_client(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in range(per_client):
            body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "wav"}
            t0 = time.perf_counter()
            try:
                async with client.stream("POST", url + "/v1/audio/speech", json=body) as response:
                    first = None
                    async for chunk in response.aiter_raw():
                        if first is None and chunk:
                            first = time.perf_counter() - t0
                    if response.status_code != 200 or first is None:
                        errors += 1
                        continue
                ttfb.append(first)
                totals.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                errors += 1

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients * 2)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    done = len(totals)
    return {
        "requests": clients * per_client,
        "ok": done,
        "errors": errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(done / wall, 3) if wall else None,
        "ttfb_p50_ms": round(_pct(ttfb, 0.5) * 1000, 1),
        "ttfb_p95_ms": round(_pct(ttfb, 0.95) * 1000, 1),
        "latency_p50_ms": round(_pct(totals, 0.5) * 1000, 1),
        "latency_p95_ms": round(_pct(totals, 0.95) * 1000, 1),
    }


def tiny_csm_env(tmp: Path, slots: int, max_audio_ms: int) -> dict:
    """Build a tiny random-weight CSM (tests/csm/tiny_models.build_tiny_csm) and the settings serving it on CPU.

    Random weights never emit EOS, so every request makes exactly ``max_audio_ms`` of audio.
    """
    sys.path.insert(0, str(ROOT))
    from tests.csm.tiny_models import build_tiny_csm

    model = build_tiny_csm(tmp / "model")
    return {
        "ECHOFORGE_DEVICE": "cpu",
        "ECHOFORGE_CSM__MODEL": str(model),
        "ECHOFORGE_CSM__COMPILE": "false",
        "ECHOFORGE_CSM__MAX_BATCH_SIZE": str(slots),
        "ECHOFORGE_CSM__MAX_WAITING": "4096",
        "ECHOFORGE_GENERATION__MAX_AUDIO_LENGTH_MS": str(max_audio_ms),
    }


async def concurrent_vs_sequential(url: str, n: int) -> dict:
    """``n`` speech requests at once vs the same ``n`` one after another (whole WAV bodies)."""
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "wav"}

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n * 2)) as client:

        async def one() -> bool:
            r = await client.post(url + "/v1/audio/speech", json=body)
            return r.status_code == 200 and len(r.content) > 44

        await one()  # warm
        t0 = time.perf_counter()
        seq_ok = [await one() for _ in range(n)]
        seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        conc_ok = await asyncio.gather(*(one() for _ in range(n)))
        conc = time.perf_counter() - t0
    return {"n": n, "sequential_s": round(seq, 3), "concurrent_s": round(conc, 3), "ratio": round(conc / seq, 3),
            "errors": (n - sum(seq_ok)) + (n - sum(conc_ok))}  # fmt: skip


async def task_load(url: str, clients: int, per_client: int) -> dict:
    ids: list[str] = []
    statuses: dict[str, str] = {}

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def submit() -> None:
            for i in range(per_client):
                r = await client.post(
                    "/api/generate", json={"text": f"{TEXT} Number {i}.", "voice": "atlas", "format": "mp3"}
                )
                if r.status_code == 202:
                    ids.append(r.json()["task_id"])

        t0 = time.perf_counter()
        await asyncio.gather(*(submit() for _ in range(clients)))
        deadline = time.monotonic() + 600
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                task = (await client.get(f"/api/tasks/{task_id}")).json()
                if task["status"] in ("done", "failed", "cancelled"):
                    statuses[task_id] = task["status"]
                    pending.discard(task_id)
            await asyncio.sleep(0.1)
        wall = time.perf_counter() - t0
        fetched = sum(
            [(await client.get(f"/api/tasks/{i}/audio")).status_code == 200 for i in ids if statuses.get(i) == "done"]
        )
    submitted = clients * per_client
    done = sum(s == "done" for s in statuses.values())
    return {
        "submitted": submitted,
        "accepted": len(ids),
        "done": done,
        "audio_fetched": fetched,
        "lost": submitted - done,
        "wall_s": round(wall, 3),
        "tasks_per_s": round(done / wall, 3) if wall else None,
    }


def append_results(results: dict) -> None:
    path = ROOT / "BENCHMARKS.md"
    s, t = results["speech"], results["tasks"]
    lines = [
        "",
        f"## Server load — {results['date']} ({results['engine']}, {results['clients']} clients)",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`.",
        "",
        "| workload | requests | ok | req/s | TTFB p50 | TTFB p95 | latency p50 | latency p95 |",
        "|---|---|---|---|---|---|---|---|",
        f"| /v1/audio/speech (wav, streamed) | {s['requests']} | {s['ok']} | {s['requests_per_s']} | {s['ttfb_p50_ms']} ms | {s['ttfb_p95_ms']} ms | {s['latency_p50_ms']} ms | {s['latency_p95_ms']} ms |",
        "",
        f"Task API: {t['submitted']} submitted, {t['done']} done, {t['audio_fetched']} audio fetched, **{t['lost']} lost**, {t['tasks_per_s']} tasks/s.",
        "",
    ]
    c = results.get("concurrent_vs_sequential")
    if c:
        lines += [
            f"{c['n']} concurrent /v1/audio/speech requests vs the same {c['n']} one after another: "
            f"{c['concurrent_s']} s vs {c['sequential_s']} s, **ratio {c['ratio']}** ({c['errors']} errors).",
            "",
        ]
    if not path.exists():
        path.write_text("# EchoForge benchmarks\n", encoding="utf-8")
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5, help="requests per client in each workload")
    parser.add_argument("--engine", default="espeak", help="auto | csm | piper | espeak")
    parser.add_argument("--workers", type=int, default=2, help="server.workers (concurrent CSM engine jobs)")
    parser.add_argument(
        "--fallback-concurrency", type=int, default=None,
        help="server.fallback_concurrency (concurrent Piper/espeak jobs; default: the server's, from the CPU count)",
    )
    parser.add_argument(
        "--tiny-csm", action="store_true",
        help="serve a tiny random-weight CSM built with tests/csm/tiny_models.build_tiny_csm (implies --engine csm, CPU)",
    )  # fmt: skip
    parser.add_argument("--csm-slots", type=int, default=16, help="--tiny-csm: csm.max_batch_size (scheduler slots)")
    parser.add_argument(
        "--max-audio-ms", type=int, default=2000,
        help="--tiny-csm: generation.max_audio_length_ms (random weights never stop early: every request makes this much)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", type=int, default=0,
        help="also time N concurrent speech requests against the same N sequential ones (0: skip)",
    )  # fmt: skip
    parser.add_argument("--machine", default="", help="machine description for BENCHMARKS.md (default: detected)")
    parser.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        extra = None
        if args.tiny_csm:
            args.engine = "csm"
            extra = tiny_csm_env(Path(tmp), args.csm_slots, args.max_audio_ms)
        data = Path(tmp) / "data"
        data.mkdir()
        proc, url = start_server(args.engine, args.workers, data, args.fallback_concurrency, extra)
        try:
            engine = httpx.get(url + "/api/health").json()["engine"]
            compare = asyncio.run(concurrent_vs_sequential(url, args.compare)) if args.compare else None
            speech = asyncio.run(speech_load(url, args.clients, args.requests))
            tasks = asyncio.run(task_load(url, args.clients, args.requests))
        finally:
            proc.terminate()
            proc.wait(30)
    results = {
        "benchmark": "server_load",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "engine": f"{engine['name']}{' (fallback)' if engine['is_fallback'] else ''} on {engine['device']}",
        "clients": args.clients,
        "machine": f"{args.machine or f'{platform.machine()}, {os.cpu_count()} CPUs'} (load average {os.getloadavg()[0]:.1f} at start), Python {platform.python_version()}",
        "command": "python benchmarks/server_load.py " + " ".join(sys.argv[1:]),
        "speech": speech,
        "tasks": tasks,
    }
    if compare:
        results["concurrent_vs_sequential"] = compare
        print(f"{compare['n']} concurrent vs sequential: {compare['concurrent_s']} s vs {compare['sequential_s']} s "
              f"(ratio {compare['ratio']})")  # fmt: skip
    print(
        f"speech: {speech['ok']}/{speech['requests']} ok, {speech['requests_per_s']} req/s, "
        f"TTFB p50 {speech['ttfb_p50_ms']} ms, p95 {speech['ttfb_p95_ms']} ms"
    )
    print(f"tasks:  {tasks['done']}/{tasks['submitted']} done, lost {tasks['lost']}, {tasks['tasks_per_s']} tasks/s")
    print(json.dumps(results))
    if not args.no_write:
        append_results(results)
    return 1 if tasks["lost"] or speech["errors"] or (compare and compare["errors"]) else 0


if __name__ == "__main__":
    sys.exit(main())
