"""Structured logs: JSON lines with request ids, and secrets that never reach a log line.

The secrets test drives the real server app (``echoforge.server.app.create_app`` with the
espeak-ng engine and an API key) with ``MetricsMiddleware`` and the ``/metrics`` router wired
the way the server is meant to wire them.
"""

from __future__ import annotations

import io
import json
import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from echoforge import metrics
from echoforge.logging import setup_logging
from echoforge.server.middleware import MetricsMiddleware


@pytest.fixture
def log_lines():
    """Configure JSON logging into a buffer; yields a function returning the parsed lines."""
    setup_logging("DEBUG", "json")
    handler = next(h for h in logging.getLogger("echoforge").handlers if getattr(h, "_echoforge", False))
    buf = io.StringIO()
    handler.setStream(buf)

    def lines() -> list[dict]:
        raw = [line for line in buf.getvalue().splitlines() if line.strip()]
        return [json.loads(line) for line in raw]  # every line must be valid JSON

    yield lines
    setup_logging("INFO", "console")


def test_json_log_lines_carry_the_request_id(log_lines):
    app = FastAPI()
    app.add_middleware(MetricsMiddleware)
    inner = logging.getLogger("echoforge.test")

    @app.get("/work/{n}")
    async def work(n: int) -> dict:
        inner.info("working on %d", n)
        return {"n": n}

    client = TestClient(app)
    client.get("/work/7", headers={"X-Request-ID": "rid-json-1"})
    fresh = client.get("/work/8").headers["x-request-id"]
    records = log_lines()
    assert records, "nothing was logged"
    for rec in records:
        assert {"ts", "level", "logger", "msg", "request_id"} <= rec.keys()
    mine = [r for r in records if r["request_id"] == "rid-json-1"]
    assert any(r["msg"] == "working on 7" for r in mine)
    access = [r for r in mine if r["logger"] == "echoforge.access"]
    assert access and access[0]["route"] == "/work/{n}" and access[0]["status"] == 200 and access[0]["duration_ms"] >= 0
    assert any(r["msg"] == "working on 8" and r["request_id"] == fresh for r in records)
    # Outside a request the id is "-", never a stale one.
    logging.getLogger("echoforge.test").info("idle")
    assert log_lines()[-1]["request_id"] == "-"


SECRET = "ef_super-secret-key-0123456789abcdef"
WRONG = "ef_wrong-guess-key-fedcba9876543210"


def _real_app(tmp_path, *, require_key_for_metrics: bool = True):
    from echoforge.config import load_settings
    from echoforge.server.app import create_app
    from echoforge.server.routers import metrics as metrics_router

    settings = load_settings(
        engine="espeak",
        data_dir=tmp_path / "data",
        server={"api_keys": [SECRET], "rate_limit_per_minute": 0, "metrics_require_key": require_key_for_metrics},
    )
    app = create_app(settings)
    if not any(getattr(r, "path", None) == "/metrics" for r in app.routes):
        # Until the server includes it: the route must come before the studio's catch-all "/" mount.
        app.router.routes.insert(0, next(r for r in metrics_router.router.routes if r.path == "/metrics"))
    if not any(m.cls is MetricsMiddleware for m in app.user_middleware):
        app.add_middleware(MetricsMiddleware)
    return app


def test_secrets_never_appear_in_logs(tmp_path, log_lines):
    pytest.importorskip("echoforge.server.app")
    with TestClient(_real_app(tmp_path)) as client:
        assert client.get("/api/voices").status_code == 401
        assert client.get("/api/voices", headers={"Authorization": f"Bearer {WRONG}"}).status_code == 401
        assert client.get("/api/voices", headers={"X-API-Key": WRONG}).status_code == 401
        assert client.get(f"/api/voices?api_key={WRONG}").status_code == 401
        assert client.get("/api/voices", headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
        client.get(f"/api/voices?api_key={SECRET}&token={SECRET}")
        r = client.post("/v1/audio/speech", headers={"Authorization": f"Bearer {SECRET}"},
                        json={"model": "tts-1", "voice": "alloy", "input": "Secrets stay secret.", "response_format": "wav"})
        assert r.status_code == 200, r.text
        # /metrics is protected like the other routes (metrics_require_key defaults to true).
        assert client.get("/metrics").status_code == 401
        scrape = client.get("/metrics", headers={"Authorization": f"Bearer {SECRET}"})
        assert scrape.status_code == 200
        client.get("/api/diagnostic", headers={"Authorization": f"Bearer {SECRET}"})
    records = log_lines()
    text = "\n".join(json.dumps(r) for r in records)
    assert any(r["logger"] == "echoforge.security" for r in records), "auth failures must be in the security log"
    assert SECRET not in text and WRONG not in text
    assert SECRET[3:20] not in text and WRONG[3:20] not in text
    assert SECRET not in scrape.text and WRONG not in scrape.text
    # The access log names route templates, not raw paths with query strings.
    assert not any("?" in str(r.get("route", "")) for r in records)


def test_metrics_key_requirement_can_be_turned_off(tmp_path):
    pytest.importorskip("echoforge.server.app")
    with TestClient(_real_app(tmp_path, require_key_for_metrics=False)) as client:
        assert client.get("/api/voices").status_code == 401
        r = client.get("/metrics")
        assert r.status_code == 200
        assert "echoforge_queue_depth" in r.text
        # Refreshed at scrape time from the services: the engine in use is published.
        assert 'echoforge_engine_info{device="cpu",engine="espeak"' in r.text


def test_tracing_span_is_a_noop_without_opentelemetry(monkeypatch):
    from echoforge import tracing

    monkeypatch.setattr(tracing, "_trace", None)
    with tracing.span("engine.synthesize", engine="espeak", chars=12) as s:
        assert s is None
    assert tracing.enabled() is False
    assert tracing.setup_tracing(exporter="console") is False


@pytest.fixture
def spans():
    """An in-memory span exporter on the global SDK tracer provider (installed once per process)."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, sdk.TracerProvider):
        provider = sdk.TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def test_tracing_spans_with_the_sdk(spans):
    from echoforge import tracing

    assert tracing.enabled()
    with tracing.span("queue.wait", task_id="t1", depth=3, skipped=None):
        with tracing.span("engine.synthesize", engine="espeak"):
            pass
    with pytest.raises(ValueError), tracing.span("agent.llm"):
        raise ValueError("boom")
    got = {s.name: s for s in spans.get_finished_spans()}
    assert got["engine.synthesize"].parent.span_id == got["queue.wait"].context.span_id
    assert dict(got["queue.wait"].attributes) == {"task_id": "t1", "depth": 3}
    assert got["agent.llm"].status.status_code.name == "ERROR"


def test_metrics_helpers_emit_spans_with_real_durations(spans):
    metrics.observe_synthesis("espeak", audio_seconds=2.0, wall_seconds=0.5, ttfa_seconds=0.1)
    metrics.observe_task("done", wait_s=0.25, run_s=1.0)
    metrics.observe_agent_latency({"stt_s": 0.2, "rag_s": 0.05, "llm_first_token_s": 0.3, "tts_first_audio_s": 0.15,
                                   "voice_to_voice_s": 0.7})
    got = {s.name: s for s in spans.get_finished_spans()}

    def dur(name: str) -> float:
        return (got[name].end_time - got[name].start_time) / 1e9

    assert dur("engine.synthesize") == pytest.approx(0.5, abs=1e-3)
    assert got["engine.synthesize"].attributes["rtf"] == 0.25
    assert dur("queue.wait") == pytest.approx(0.25, abs=1e-3) and dur("task.run") == pytest.approx(1.0, abs=1e-3)
    assert got["queue.wait"].end_time <= got["task.run"].start_time + 1000
    assert dur("agent.voice_to_voice") == pytest.approx(0.7, abs=1e-3)
    stages = [got[f"agent.{s}"] for s in ("transcript", "retrieval", "first_token", "first_audio")]
    assert all(a.end_time <= b.start_time + 1000 for a, b in zip(stages, stages[1:], strict=False))  # back to back, in order
    assert stages[0].start_time == got["agent.voice_to_voice"].start_time

def test_redaction_keeps_uvicorn_access_args_usable():
    from echoforge.logging import RedactSecretsFilter, redact

    assert redact("GET /api/voices?api_key=ef_abc123&x=1") == "GET /api/voices?api_key=***&x=1"
    assert redact("Authorization: Bearer ef_abcdefgh123") == "Authorization: Bearer ***"
    assert redact("monkey=2 keyboard=3") == "monkey=2 keyboard=3"
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/api/voices?api_key={SECRET}", "1.1", 401), None)
    assert RedactSecretsFilter().filter(record)
    assert SECRET not in record.getMessage() and record.args[4] == 401


@pytest.mark.integration
def test_keys_in_urls_never_reach_the_server_log(tmp_path):
    """`echoforge serve` end to end: keys sent as ?api_key= (HTTP and the WebSocket handshake)."""
    pytest.importorskip("echoforge.server.app")
    websockets = pytest.importorskip("websockets.sync.client")
    import httpx
    from _servers import ChildProcess, echoforge_cli, free_port, http_ready, wait_until

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(ECHOFORGE_ENGINE="espeak", ECHOFORGE_DATA_DIR=str(tmp_path / "data"), ECHOFORGE_LOG_FORMAT="json",
               ECHOFORGE_SERVER__API_KEYS=f'["{SECRET}"]', ECHOFORGE_SERVER__RATE_LIMIT_PER_MINUTE="0")  # fmt: skip
    server = ChildProcess([*echoforge_cli(), "serve", "--host", "127.0.0.1", "--port", str(port)], tmp_path,
                          env=env, name="server")  # fmt: skip
    with server.start(http_ready(base)):
        httpx.get(f"{base}/api/voices?api_key={SECRET}")
        httpx.get(f"{base}/api/voices?api_key={WRONG}")
        httpx.get(f"{base}/api/voices", headers={"Authorization": f"Bearer {WRONG}"})
        with websockets.connect(f"ws://127.0.0.1:{port}/api/stream?api_key={SECRET}") as ws:
            ws.send('{"type": "start"}')
            assert "ready" in ws.recv(timeout=30)
        # Access lines are written after each response: wait for the last one, not a time.
        wait_until(lambda: server.log().count("/api/voices") >= 3, what="the access log lines")
    log_path = server.log_path
    log = log_path.read_text()
    assert "/api/stream" in log or "WebSocket" in log or "GET /api/voices" in log  # the requests were logged …
    assert SECRET not in log and WRONG not in log  # … without the keys
