"""Metrics module + middleware: route templates, request ids, and gauges that move during requests.

The live test runs a real uvicorn server on a free loopback port with a small app of its own
(a queue-depth gauge, and the real espeak-ng engine streamed through ``synthesis_timer``), and
scrapes ``/metrics`` while a request is still streaming.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import numpy as np
import pytest
from _servers import uvicorn_thread, wait_until
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from echoforge import metrics
from echoforge.server.middleware import MetricsMiddleware
from echoforge.server.routers import metrics as metrics_router


def sample(name: str, **labels: str) -> float:
    """Current value of one series in the EchoForge registry (0.0 when absent)."""
    value = metrics.REGISTRY.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def scrape_value(text: str, name: str, **labels: str) -> float | None:
    """Parse one series out of Prometheus text format."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(p for p in (m.group(2) or "").split(",") if p))
        if got == want:
            return float(m.group(3))
    return None


def small_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(MetricsMiddleware)
    app.include_router(metrics_router.router)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("boom")

    return app


def test_requests_are_counted_by_route_template_not_raw_path():
    client = TestClient(small_app(), raise_server_exceptions=False)
    before = sample("echoforge_http_requests_total", method="GET", route="/items/{item_id}", status="200")
    for i in range(5):
        assert client.get(f"/items/{i}").status_code == 200
    assert sample("echoforge_http_requests_total", method="GET", route="/items/{item_id}", status="200") == before + 5
    assert client.get("/items/notanint").status_code == 422
    assert sample("echoforge_http_requests_total", method="GET", route="/items/{item_id}", status="422") >= 1
    # Unknown paths share one series, whatever the path.
    unmatched = sample("echoforge_http_requests_total", method="GET", route="<unmatched>", status="404")
    client.get("/nope/123")
    client.get("/nope/456")
    assert sample("echoforge_http_requests_total", method="GET", route="<unmatched>", status="404") == unmatched + 2
    # An exception is counted as a 500 on its route.
    assert client.get("/boom").status_code == 500
    assert sample("echoforge_http_requests_total", method="GET", route="/boom", status="500") >= 1
    assert sample("echoforge_http_request_duration_seconds_count", method="GET", route="/items/{item_id}") >= 5
    text = client.get("/metrics").text
    assert "/items/1" not in text and "/nope/123" not in text


def test_request_id_in_and_out():
    client = TestClient(small_app())
    r = client.get("/items/1", headers={"X-Request-ID": "req-abc.123"})
    assert r.headers["x-request-id"] == "req-abc.123"
    fresh = client.get("/items/1").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", fresh)
    # A hostile id (newlines, too long) is replaced, never echoed.
    r = client.get("/items/1", headers={"X-Request-ID": "x" * 500})
    assert r.headers["x-request-id"] != "x" * 500
    assert len(r.headers.get_list("x-request-id")) == 1


def test_metrics_endpoint_format_and_content_type():
    client = TestClient(small_app())
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in (
        "echoforge_http_requests_total",
        "echoforge_queue_depth",
        "echoforge_engine_real_time_factor",
        "echoforge_engine_time_to_first_audio_seconds",
        "echoforge_agent_stage_seconds",
        "echoforge_voice_prompt_cache_total",
        "echoforge_process_resident_memory_bytes",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in r.text, name
    assert scrape_value(r.text, "echoforge_process_resident_memory_bytes") > 10_000_000


def test_helpers_record_and_fold_unknown_labels():
    metrics.observe_synthesis("test-engine", audio_seconds=2.0, wall_seconds=0.5, ttfa_seconds=0.08)
    assert sample("echoforge_engine_last_real_time_factor", engine="test-engine") == pytest.approx(0.25)
    assert sample("echoforge_engine_frames_per_second", engine="test-engine") == pytest.approx(25 / 0.5)
    assert sample("echoforge_engine_time_to_first_audio_seconds_count", engine="test-engine") >= 1
    metrics.observe_synthesis("test-engine", audio_seconds=1.0, wall_seconds=2.0, frames=10)
    assert sample("echoforge_engine_last_real_time_factor", engine="test-engine") == pytest.approx(2.0)
    assert sample("echoforge_engine_frames_per_second", engine="test-engine") == pytest.approx(5.0)

    done = sample("echoforge_tasks_total", outcome="done")
    metrics.observe_task("done", wait_s=0.3, run_s=1.0)
    metrics.observe_task("exploded-in-a-new-way")  # unknown outcomes never create new series
    assert sample("echoforge_tasks_total", outcome="done") == done + 1
    assert sample("echoforge_tasks_total", outcome="other") >= 1
    assert sample("echoforge_tasks_total", outcome="exploded-in-a-new-way") == 0

    hits, misses = sample("echoforge_voice_prompt_cache_total", result="hit"), sample("echoforge_voice_prompt_cache_total", result="miss")
    metrics.record_prompt_cache(True)
    metrics.record_prompt_cache(True)
    metrics.record_prompt_cache(False)
    assert sample("echoforge_voice_prompt_cache_total", result="hit") == hits + 2
    assert sample("echoforge_voice_prompt_cache_total", result="miss") == misses + 1

    barge = sample("echoforge_agent_barge_ins_total")
    metrics.record_barge_in()
    assert sample("echoforge_agent_barge_ins_total") == barge + 1
    for stage in ("transcript", "first_token", "first_audio", "voice_to_voice"):
        metrics.observe_agent_stage(stage, 0.12)
        assert sample("echoforge_agent_stage_seconds_count", stage=stage) >= 1
    turns = sample("echoforge_agent_turns_total")
    v2v = sample("echoforge_agent_stage_seconds_count", stage="voice_to_voice")
    metrics.observe_agent_latency({"stt_s": 0.2, "rag_s": 0.01, "llm_first_token_s": 0.3, "tts_first_audio_s": 0.1,
                                   "transcript_at_s": 0.2, "first_token_at_s": 0.51, "voice_to_voice_s": 0.61})
    metrics.observe_agent_latency({"stt_s": 0.2, "rag_s": None, "llm_first_token_s": None, "tts_first_audio_s": None,
                                   "voice_to_voice_s": None})  # a turn cut short: only what happened
    assert sample("echoforge_agent_turns_total") == turns + 2
    assert sample("echoforge_agent_stage_seconds_count", stage="voice_to_voice") == v2v + 1
    assert sample("echoforge_agent_stage_seconds_count", stage="retrieval") >= 1
    metrics.observe_agent_stage("made-up", 1.0)
    assert sample("echoforge_agent_stage_seconds_count", stage="other") >= 1

    metrics.set_model_load_time("test-engine", 3.5)
    metrics.set_model_load_time("test-engine", 0.4, phase="warmup")
    assert sample("echoforge_model_load_seconds", engine="test-engine", phase="load") == 3.5
    assert sample("echoforge_model_load_seconds", engine="test-engine", phase="warmup") == 0.4
    metrics.set_engine_info("piper", "joe", "cpu", True)
    assert sample("echoforge_engine_info", engine="piper", model="joe", device="cpu", fallback="true") == 1


def test_engine_labels_are_capped(monkeypatch):
    monkeypatch.setattr(metrics, "_engines_seen", set())
    for i in range(40):
        metrics.observe_synthesis(f"engine-{i}", 1.0, 0.1)
    names = {s.labels.get("engine") for m in metrics.REGISTRY.collect() for s in m.samples if m.name == "echoforge_engine_audio_seconds"}
    assert len({n for n in names if n.startswith("engine-")}) <= metrics._MAX_ENGINE_LABELS
    assert "other" in names
    metrics.observe_synthesis("espeak", 1.0, 0.1)  # the real engines always keep their own label
    assert sample("echoforge_engine_audio_seconds_total", engine="espeak") >= 1


# ------------------------------------------------------------------ live scrape while requests run
@pytest.fixture
def live_app():
    """A real uvicorn server: /speak queues, then streams espeak-ng speech chunk by chunk."""
    from echoforge.config import load_settings
    from echoforge.engines import SynthesisRequest, create_engine

    engine = create_engine(load_settings(engine="espeak"), "espeak")
    app = small_app()
    gate = threading.Event()  # set: the queued requests may start
    gate.mid = threading.Event()  # set: streams may go past their first chunk
    pending = {"n": 0}

    @app.get("/speak")
    async def speak(text: str = "Metrics move while this sentence is spoken, chunk by chunk.") -> StreamingResponse:
        pending["n"] += 1
        metrics.set_queue_depth(pending["n"])

        async def body():
            try:
                await asyncio.to_thread(gate.wait, 120)  # "queued" until the test lets it run
            finally:
                pending["n"] -= 1
                metrics.set_queue_depth(pending["n"])
            audio = await asyncio.to_thread(lambda: np.concatenate(list(engine.stream(SynthesisRequest(text=text)))))
            step = engine.sample_rate // 10  # 100 ms chunks, sent in about half real time
            chunks = [audio[i : i + step] for i in range(0, audio.size, step)]
            with metrics.synthesis_timer(engine.name, engine.sample_rate) as t:
                for i, chunk in enumerate(chunks):
                    if i == 1:  # mid-stream until the test has scraped it
                        await asyncio.to_thread(gate.mid.wait, 120)
                    t.chunk(len(chunk))
                    yield chunk.astype("float32").tobytes()

        return StreamingResponse(body(), media_type="application/octet-stream")

    with uvicorn_thread(app, lifespan="off") as (url, server):
        yield url, server, gate, engine


def test_scrape_shows_queue_depth_and_rtf_moving_while_requests_run(live_app):
    url, server, gate, engine = live_app
    name = engine.name
    count0 = sample("echoforge_engine_real_time_factor_count", engine=name)
    results: list[httpx.Response] = []

    def call():
        with httpx.Client(timeout=60) as c:
            results.append(c.get(f"{url}/speak"))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    # Three requests wait in the "queue": the scrape must say so.
    deadline = time.monotonic() + 20
    while True:
        depth = scrape_value(httpx.get(f"{url}/metrics").text, "echoforge_queue_depth")
        if depth == 3.0:
            break
        assert time.monotonic() < deadline, f"queue depth never reached 3 (last {depth})"
        time.sleep(0.05)
    assert scrape_value(httpx.get(f"{url}/metrics").text, "echoforge_http_requests_in_progress", method="GET") >= 3

    gate.set()
    # While audio streams (every stream holds after its first chunk): active syntheses > 0,
    # a live RTF for the engine, and the queue drained.
    def streaming() -> dict | None:
        text = httpx.get(f"{url}/metrics").text
        active = scrape_value(text, "echoforge_engine_active_syntheses", engine=name) or 0
        if active < 3 or scrape_value(text, "echoforge_queue_depth") != 0.0:
            return None
        return {"rtf": scrape_value(text, "echoforge_engine_last_real_time_factor", engine=name)}

    seen = wait_until(streaming, what="all three streams in progress, none queued")
    gate.mid.set()
    for t in threads:
        t.join(120)
    assert all(r.status_code == 200 and len(r.content) > 1000 for r in results)
    seen_rtf, depths = seen["rtf"], [0.0]
    assert seen_rtf is not None and seen_rtf > 0
    assert 0.0 in depths  # the queue drained while we watched
    text = httpx.get(f"{url}/metrics").text
    assert scrape_value(text, "echoforge_engine_real_time_factor_count", engine=name) == count0 + 3
    assert scrape_value(text, "echoforge_engine_active_syntheses", engine=name) == 0
    assert scrape_value(text, "echoforge_engine_time_to_first_audio_seconds_count", engine=name) >= 3



def test_every_metric_named_in_the_docs_exists():
    """docs/observability.md and the metrics module agree."""
    from pathlib import Path

    try:  # the Ray Serve metrics are registered by the deploy module (optional extra)
        import echoforge.deploy.remote  # noqa: F401
    except ImportError:
        pass
    doc = (Path(__file__).resolve().parents[1] / "docs" / "observability.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(echoforge_[a-z_]+[a-z])\b", doc))
    metrics.observe_agent_latency({"voice_to_voice_s": 0.5})  # make sure labelled families have samples
    samples = {s.name for fam in metrics.REGISTRY.collect() for s in fam.samples}
    families = {fam.name for fam in metrics.REGISTRY.collect()}
    source = Path(metrics.__file__).read_text(encoding="utf-8")
    def base(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum)$", "", name)

    missing = sorted(n for n in named if n not in samples and base(n) not in families and f'"{n}"' not in source)
    assert not missing, f"documented but not exported: {missing}"
    exported = {f for f in families if f.startswith("echoforge_")}
    undocumented = sorted(f for f in exported if f not in doc and f + "_total" not in doc)
    assert not undocumented, f"exported but not documented: {undocumented}"


def test_grafana_dashboard_queries_exported_metrics():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "echoforge-dashboard.json"
    dash = json.loads(path.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs
    families = {fam.name for fam in metrics.REGISTRY.collect()}
    source = Path(metrics.__file__).read_text(encoding="utf-8")
    for expr in exprs:
        for name in re.findall(r"\b(echoforge_[a-z_]+[a-z])\b", expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert base in families or f'"{name}"' in source, f"{name} in the dashboard is not exported"
