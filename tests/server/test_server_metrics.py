"""A Prometheus scrape of the real server shows queue depth and the engine's RTF moving.

The real app (``create_app``, SQLite queue, one worker) runs in this process on a loopback port
with the espeak-ng engine; the first task holds inside the engine (the ``hold`` probe) until the
test has seen the others waiting, so "tasks are queued while the worker is busy" is true by
construction, at any machine speed.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import AppServer, wait_until
from probe_engine import ProbeEspeakEngine
from test_metrics import scrape_value


@pytest.fixture
def real_server(tmp_path):
    engine = ProbeEspeakEngine(max_concurrency=1)
    engine.dir = tmp_path  # the probe's files: started-<key>, release
    settings = {"server": {"workers": 1, "fallback_concurrency": 1, "queue_max_pending": 50}}
    with AppServer(tmp_path / "data", engine, settings).start() as server:
        yield server.url, tmp_path
        (tmp_path / "release").touch()


@pytest.mark.integration
def test_scrape_of_the_real_server_shows_queue_depth_and_rtf_moving(real_server):
    url, probe = real_server
    text = "EchoForge keeps a persistent queue of speech tasks, and each one holdm here until released."
    with httpx.Client(base_url=url, timeout=120) as client:
        before = client.get("/metrics").text
        count0 = scrape_value(before, "echoforge_engine_real_time_factor_count", engine="espeak") or 0.0
        ids = [client.post("/api/generate", json={"text": text, "voice": "atlas", "format": "wav"}).json()["task_id"] for _ in range(6)]
        wait_until(lambda: (probe / "started-m").exists(), what="the first task inside the engine")
        depths = [scrape_value(client.get("/metrics").text, "echoforge_queue_depth")]
        (probe / "release").touch()
        rtfs = []

        def finished() -> bool:
            scrape = client.get("/metrics").text
            depths.append(scrape_value(scrape, "echoforge_queue_depth"))
            rtfs.append(scrape_value(scrape, "echoforge_engine_last_real_time_factor", engine="espeak"))
            return all(client.get(f"/api/tasks/{i}").json()["status"] in ("done", "failed", "cancelled") for i in ids)

        wait_until(finished, what="all tasks finished")
        statuses = [client.get(f"/api/tasks/{i}").json()["status"] for i in ids]
        assert all(s == "done" for s in statuses), statuses
        final = client.get("/metrics").text
    # Queue depth is read from the queue at scrape time: it was > 0 while tasks waited, then 0.
    assert depths[0] == 5, depths  # one task in the engine, five waiting
    assert scrape_value(final, "echoforge_queue_depth") == 0
    assert 'echoforge_http_requests_total{method="POST",route="/api/generate",status="202"}' in final
    assert scrape_value(final, "echoforge_engine_real_time_factor_count", engine="espeak") >= count0 + 6
    assert any(r for r in rtfs), "no scrape saw an engine real-time factor"
    assert scrape_value(final, "echoforge_tasks_total", outcome="done") >= 6
