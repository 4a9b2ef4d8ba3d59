"""A Prometheus scrape of the real server shows queue depth and the engine's RTF moving.

The real app (``create_app``, espeak-ng engine, SQLite queue, one worker) runs in uvicorn on a
free loopback port; tasks are submitted faster than the worker finishes them, and ``/metrics``
is scraped while they run.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from test_metrics import scrape_value

from echoforge import metrics

server_app = pytest.importorskip("echoforge.server.app")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def real_server(tmp_path):
    import uvicorn

    from echoforge.config import load_settings
    from echoforge.server.routers import metrics as metrics_router

    settings = load_settings(
        engine="espeak", data_dir=tmp_path / "data",
        server={"rate_limit_per_minute": 0, "workers": 1, "queue_max_pending": 50},
    )
    app = server_app.create_app(settings)
    if not any(getattr(r, "path", None) == "/metrics" for r in app.routes):
        app.router.routes.insert(0, next(r for r in metrics_router.router.routes if r.path == "/metrics"))
    if not any(m.cls is metrics.MetricsMiddleware for m in app.user_middleware):
        app.add_middleware(metrics.MetricsMiddleware)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.integration
def test_scrape_of_the_real_server_shows_queue_depth_and_rtf_moving(real_server):
    url = real_server
    text = ("EchoForge keeps a persistent queue of speech tasks, and this sentence is long enough "
            "that the single worker needs a moment for each one. ") * 3
    with httpx.Client(base_url=url, timeout=30) as client:
        before = client.get("/metrics").text
        count0 = scrape_value(before, "echoforge_engine_real_time_factor_count", engine="espeak") or 0.0
        ids = [client.post("/api/generate", json={"text": text, "voice": "atlas", "format": "wav"}).json()["task_id"] for _ in range(6)]
        depths, rtfs = [], []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            scrape = client.get("/metrics").text
            depths.append(scrape_value(scrape, "echoforge_queue_depth"))
            rtfs.append(scrape_value(scrape, "echoforge_engine_last_real_time_factor", engine="espeak"))
            statuses = [client.get(f"/api/tasks/{i}").json()["status"] for i in ids]
            if all(s in ("done", "failed", "cancelled") for s in statuses):
                break
            time.sleep(0.05)
        assert all(s == "done" for s in statuses), statuses
        final = client.get("/metrics").text
    # Queue depth is read from the queue at scrape time: it was > 0 while tasks waited, then 0.
    assert max(d or 0 for d in depths) >= 2, depths
    assert scrape_value(final, "echoforge_queue_depth") == 0
    assert 'echoforge_http_requests_total{method="POST",route="/api/generate",status="202"}' in final
    assert scrape_value(final, "echoforge_engine_real_time_factor_count", engine="espeak") >= count0 + 6
    assert any(r for r in rtfs), "no scrape saw an engine real-time factor"
    assert scrape_value(final, "echoforge_tasks_total", outcome="done") >= 6
