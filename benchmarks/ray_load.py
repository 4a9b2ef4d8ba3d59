"""Server load through Ray Serve: the same workloads as ``server_load.py`` against 1, 2, … engine replicas.

Starts a local Ray instance once, deploys ``echoforge.deploy.build_app`` with each replica count
in turn (``ray.replicas``; per-replica slots = ``server.fallback_concurrency`` for the fallbacks),
and runs ``server_load.py``'s ``speech_load`` (streamed ``/v1/audio/speech``) and ``task_load``
(``/api/generate`` → done → audio fetched) against it. Prints a table, appends it to
BENCHMARKS.md (unless ``--no-write``) and ends with one JSON line.

    python benchmarks/ray_load.py --replicas 1,2 --clients 8 --requests 4 --engine espeak
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("server_load", ROOT / "benchmarks" / "server_load.py")
server_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(server_load)


def replica_spread(url: str, n: int) -> Counter:
    """Which replica served each of ``n`` concurrent speech requests (``X-EchoForge-Replica``)."""
    import httpx

    async def run() -> Counter:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"model": "tts-1", "voice": "alloy", "input": server_load.TEXT, "response_format": "pcm"}
            rs = await asyncio.gather(*(client.post(url + "/v1/audio/speech", json=body) for _ in range(n)))
        return Counter(r.headers.get("x-echoforge-replica", "?") for r in rs if r.status_code == 200)

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2", help="comma-separated engine replica counts")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client in each workload")
    parser.add_argument("--engine", default="espeak", help="piper | espeak (CSM: configure csm.model and GPUs)")
    parser.add_argument("--slots", type=int, default=2, help="requests one replica runs at once")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--machine", default="", help="machine description for BENCHMARKS.md")
    parser.add_argument("--date", default="", help="date for BENCHMARKS.md (default: now, UTC)")
    parser.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args()

    import ray
    from ray import serve

    from echoforge.config import load_settings
    from echoforge.deploy.app import build_app

    counts = [int(x) for x in args.replicas.split(",") if x.strip()]
    port = server_load._free_port()
    url = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=args.num_cpus or max(counts), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    try:
        for n in counts:
            with tempfile.TemporaryDirectory() as tmp:
                settings = load_settings(
                    engine=args.engine,
                    data_dir=tmp,
                    server={
                        "rate_limit_per_minute": 0,
                        "fallback_concurrency": args.slots,
                        "fallback_max_waiting": 1024,
                    },
                    ray={"replicas": n, "num_cpus": (args.num_cpus or max(counts)) / n},
                )
                t0 = time.perf_counter()
                serve.run(build_app(settings), name="bench", route_prefix="/")
                deploy_s = time.perf_counter() - t0
                asyncio.run(server_load.speech_load(url, 2, 1))  # warm-up
                speech = asyncio.run(server_load.speech_load(url, args.clients, args.requests))
                tasks = asyncio.run(server_load.task_load(url, args.clients, args.requests))
                spread = replica_spread(url, args.clients * 2)
                serve.delete("bench")
            rows.append({"replicas": n, "deploy_s": round(deploy_s, 1), "speech": speech, "tasks": tasks,
                         "spread": sorted(spread.values(), reverse=True)})  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()

    header = "| replicas | speech ok | req/s | TTFB p50 | TTFB p95 | latency p50 | latency p95 | tasks done/lost | tasks/s | spread of 2×clients requests |"
    table = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, t = r["speech"], r["tasks"]
        table.append(
            f"| {r['replicas']} | {s['ok']}/{s['requests']} | {s['requests_per_s']} | {s['ttfb_p50_ms']} ms | {s['ttfb_p95_ms']} ms "
            f"| {s['latency_p50_ms']} ms | {s['latency_p95_ms']} ms | {t['done']}/{t['lost']} | {t['tasks_per_s']} | {' + '.join(map(str, r['spread']))} |"
        )
    print("\n".join(table))
    command = "python benchmarks/ray_load.py " + " ".join(sys.argv[1:])
    machine = args.machine or f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    date = args.date or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not args.no_write:
        lines = [
            "",
            f"## Server load on Ray Serve — {date} ({args.engine} (fallback), {args.clients} clients)",
            "",
            f"Issue 19: `echoforge.deploy` (FastAPI ingress + engine replicas over streaming deployment handles), "
            f"a local Ray instance, {args.slots} slot(s) per replica. Machine: {machine}. Command: `{command}`.",
            "",
            *table,
            "",
        ]
        with (ROOT / "BENCHMARKS.md").open("a", encoding="utf-8") as f:
            f.write("\n".join(lines))
    print(json.dumps({"benchmark": "ray_load", "engine": args.engine, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
