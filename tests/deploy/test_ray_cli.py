"""`echoforge serve --ray` as a user starts it: ``--replicas``, ``--autoscaling-config`` (Ray's whole
``autoscaling_config`` passed through), readiness that waits for every replica, and the replica's
model load time."""

from __future__ import annotations

import httpx
import pytest
from _servers import AppServer, ChildProcess, echoforge_cli, free_port, http_ready
from typer.testing import CliRunner

from echoforge.engines.espeak import EspeakEngine


class ReplicatedEspeak(EspeakEngine):
    """espeak-ng reporting Ray Serve replica state the way RemoteEngine does (``running`` of ``target``)."""

    load_s = 1.25

    def __init__(self) -> None:
        super().__init__()
        self.running = 1

    def replicas(self) -> dict:
        rows = [{"id": f"r{i}", "state": "RUNNING" if i < self.running else "STARTING"} for i in range(2)]
        return {"backend": "ray", "running": self.running, "target": 2, "states": {}, "replicas": rows}


def test_health_is_not_ready_until_every_replica_runs(tmp_path):
    engine = ReplicatedEspeak()
    with AppServer(tmp_path, engine).start() as server, httpx.Client(base_url=server.url) as client:
        r = client.get("/api/health")
        assert r.status_code == 503 and r.json()["status"] == "degraded" and r.headers["retry-after"]
        engine.running = 2
        r = client.get("/api/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert r.json()["model_load_s"] == 1.25  # the replica's load time, not 0.0
        engine.running = 1  # autoscaling down later (or a replica restarting) does not take it out
        assert client.get("/api/health").status_code == 200


def test_autoscaling_config_passes_through():
    pytest.importorskip("ray")
    from echoforge.config import load_settings
    from echoforge.deploy.app import engine_options, max_replicas

    settings = load_settings(engine="espeak", server={"fallback_concurrency": 2})
    full = {"min_replicas": 0, "initial_replicas": 1, "max_replicas": 6, "upscale_delay_s": 3, "downscale_delay_s": 120,
            "metrics_interval_s": 2, "look_back_period_s": 10, "smoothing_factor": 0.5}  # fmt: skip
    opts = engine_options(settings, full)
    assert "num_replicas" not in opts and max_replicas(opts) == 6
    assert opts["autoscaling_config"] == {**full, "target_ongoing_requests": 2}
    with_bounds = load_settings(engine="espeak", ray={"autoscaling_min": 1, "autoscaling_max": 3})
    assert engine_options(with_bounds, {"upscale_delay_s": 1})["autoscaling_config"]["upscale_delay_s"] == 1


def test_replicas_and_autoscaling_flags(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from echoforge.cli import app
    from echoforge.deploy import app as deploy_app

    seen = {}
    monkeypatch.setattr(deploy_app, "run", lambda settings, **kw: seen.update(settings=settings, **kw))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--ray", "--replicas", "2", "--engine", "espeak"])
    assert r.exit_code == 0, r.output
    assert seen["settings"].ray.replicas == 2 and seen["autoscaling_config"] is None
    (tmp_path / "auto.yaml").write_text("min_replicas: 1\nmax_replicas: 4\nupscale_delay_s: 2\n")
    r = runner.invoke(app, ["serve", "--ray", "--autoscaling-config", "auto.yaml"])
    assert r.exit_code == 0, r.output
    assert seen["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "upscale_delay_s": 2}
    for args, words in ((["--replicas", "2"], "--ray"), (["--ray", "--autoscaling-config", "[1]"], "neither JSON")):
        r = runner.invoke(app, ["serve", *args])
        assert r.exit_code != 0 and words in r.output, r.output


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_serve_ray_with_two_replicas_is_ready_only_when_both_run(tmp_path):
    pytest.importorskip("ray.serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [*echoforge_cli(), "serve", "--ray", "--replicas", "2", "--engine", "espeak", "--port", str(port)]
    env = {"ECHOFORGE_DATA_DIR": str(tmp_path / "data"), "ECHOFORGE_SERVER__RATE_LIMIT_PER_MINUTE": "0",
           "ECHOFORGE_RAY__NUM_CPUS": "0.5", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    proc = ChildProcess(args, tmp_path, env=env, name="serve-ray").start(http_ready(url), timeout=480)
    try:
        health = httpx.get(url + "/api/health", timeout=30).json()  # the first 200: every replica runs
        replicas = health["replicas"]
        assert replicas["target"] == 2 and replicas["running"] == 2, replicas
        assert sum(r["state"] == "RUNNING" for r in replicas["replicas"]) == 2
        r = httpx.post(
            url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello."}, timeout=60
        )
        assert r.status_code == 200 and len(r.content) > 1000
    finally:
        proc.stop(timeout=60)
