"""EchoForge on Ray Serve (echoforge.deploy) with a local Ray instance and 2 CPU engine replicas.

One Ray instance for the whole module (started once, shut down at the end); the applications
(espeak, tiny CSM, a slow sine engine) are deployed one after the other on "/". Skipped with the
reason when ray[serve] is missing or Ray cannot start here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from _servers import free_port

ray = pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 'echoforge[ray]')")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'echoforge[ray]')")

from echoforge.audio import load_audio  # noqa: E402
from echoforge.config import load_settings  # noqa: E402

TESTS = Path(__file__).parents[1]
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Cluster:
    """The module's Ray instance and Serve proxy; ``deploy`` replaces the application on "/"."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app: str | None = None

    def deploy(self, name: str, settings: dict, **kw) -> httpx.Client:
        from echoforge.deploy.app import build_app

        if self.app is not None:
            serve.delete(self.app)
        data = self.tmp / name
        data.mkdir(parents=True, exist_ok=True)
        base = {"data_dir": str(data), "server": {"rate_limit_per_minute": 0}, "ray": {"replicas": 2, "app_name": name}}
        for key, value in settings.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        serve.run(build_app(load_settings(**base), **kw), name=name, route_prefix="/")
        self.app = name
        client = httpx.Client(base_url=self.url, timeout=60.0)
        wait_running(client, 2)
        return client


def wait_running(client: httpx.Client, n: int, timeout: float = 300.0) -> dict:  # deadlines for a busy box
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        health = client.get("/api/health").json()
        replicas = health.get("replicas") or {}
        if replicas.get("running") == n and sum(r["state"] == "RUNNING" for r in replicas["replicas"]) == n:
            return health
        time.sleep(0.25)
    raise AssertionError(f"not {n} running replicas after {timeout} s: {health.get('replicas')}")


def wait_task(client: httpx.Client, task_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/api/tasks/{task_id}").json()
        if task["status"] in ("done", "failed", "cancelled"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} still {task['status']} after {timeout} s")


def speech(client: httpx.Client, text: str = TEXT, fmt: str = "wav", **extra) -> httpx.Response:
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": fmt, **extra}
    return client.post("/v1/audio/speech", json=body)


def spread(client: httpx.Client, n: int = 12, text: str = TEXT, **extra) -> list[str]:
    """``n`` concurrent speech requests; the replica header of each (all must be 200)."""
    with ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(lambda i: speech(client, f"{text} Number {i}.", **extra), range(n)))
    assert all(r.status_code == 200 for r in responses), [r.text[:200] for r in responses if r.status_code != 200]
    return [r.headers["x-echoforge-replica"] for r in responses]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "SINE_DELAY": "0.15", "HF_HUB_OFFLINE": "1"}},
        )
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"a local Ray instance cannot start here: {exc}")
    c = Cluster(tmp_path_factory.mktemp("ray-serve"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": c.port})
        yield c
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def espeak(cluster):
    client = cluster.deploy("espeak", {"engine": "espeak", "server": {"fallback_concurrency": 2}})
    yield client
    client.close()


# ---------------------------------------------------------------------------------- espeak
def test_health_and_metrics_report_replicas(espeak):
    health = wait_running(espeak, 2)
    assert health["engine"]["name"] == "espeak" and health["engine"]["is_fallback"] is True
    replicas = health["replicas"]
    assert replicas["backend"] == "ray" and replicas["deployment"] == "EchoForgeEngine"
    assert all(r["pid"] for r in replicas["replicas"])
    assert health["streams"]["capacity"] == 4  # 2 replicas × 2 slots each
    response = espeak.get("/api/health")
    assert response.headers["x-echoforge-replica"].startswith("ingress-")  # no synthesis: the ingress served it
    assert "/v1/audio/speech" in espeak.get("/openapi.json").json()["paths"]  # the same app, OpenAPI included
    text = espeak.get("/metrics").text
    assert 'echoforge_replicas{state="RUNNING"} 2.0' in text


def test_concurrent_requests_are_spread_over_both_replicas(espeak):
    served = spread(espeak)
    ids = {r["id"] for r in espeak.get("/api/health").json()["replicas"]["replicas"]}
    assert set(served) <= ids and len(set(served)) == 2, served
    metrics = espeak.get("/metrics").text
    assert all(f'echoforge_replica_requests_total{{replica="{r}"}}' in metrics for r in set(served))


def test_streaming_sse_and_websocket(espeak):
    with espeak.stream(
        "POST", "/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "pcm"}
    ) as r:
        assert r.status_code == 200 and r.headers["x-echoforge-replica"] != ""
        pcm = b"".join(r.iter_bytes())
    assert len(pcm) / 2 / 22_050 > 2.0
    r = speech(espeak, fmt="pcm", stream_format="sse")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done" and events[0]["type"] == "speech.audio.delta"
    assert not r.headers["x-echoforge-replica"].startswith("ingress-")
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{espeak.base_url.port}/api/stream") as ws:
        ws.send(json.dumps({"type": "start", "voice": "rowan", "format": "pcm"}))
        assert json.loads(ws.recv(timeout=20))["sample_rate"] == 22_050
        ws.send(json.dumps({"type": "text", "text": "Hello there. How are you?"}))
        ws.send(json.dumps({"type": "end"}))
        audio, kinds = bytearray(), []
        while "done" not in kinds and "error" not in kinds:
            msg = ws.recv(timeout=30)
            if isinstance(msg, bytes):
                audio += msg
            else:
                kinds.append(json.loads(msg)["type"])
    assert kinds.count("segment_end") == 2 and len(audio) > 22_050


def test_tasks_survive_a_killed_replica(espeak):
    health = wait_running(espeak, 2)
    tasks = [
        espeak.post("/api/generate", json={"text": f"{TEXT} {TEXT} Task {i}.", "voice": "alloy"}).json()["task_id"]
        for i in range(8)
    ]
    victim = health["replicas"]["replicas"][0]
    os.kill(victim["pid"], signal.SIGKILL)  # the replica's process, mid-work
    results = [wait_task(espeak, t) for t in tasks]
    assert [t["status"] for t in results] == ["done"] * 8, [t.get("error") for t in results]
    audio, sr = load_audio(espeak.get(results[-1]["result_url"]).content)
    assert sr == 22_050 and audio.size > sr
    for _ in range(4):  # later requests succeed (on the live replica, then on both)
        r = speech(espeak)
        assert r.status_code == 200 and r.content[:4] == b"RIFF"
    # Ray Serve notices the death (its health check) and replaces the dead replica.
    deadline = time.monotonic() + 300
    while True:
        health = wait_running(espeak, 2)
        ids = {r["id"] for r in health["replicas"]["replicas"]}
        if victim["id"] not in ids or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert victim["id"] not in ids


# ---------------------------------------------------------------------------------- slow sine engine
def test_a_replica_dying_mid_stream_fails_that_stream_clearly(cluster):
    sine = _load("sine_engine", TESTS / "server" / "sine_engine.py")
    ray.cloudpickle.register_pickle_by_value(sine)  # the replicas cannot import tests/
    client = cluster.deploy("sine", {}, engine_factory=sine.SineEngine.from_settings)
    try:
        pids = {r["id"]: r["pid"] for r in client.get("/api/health").json()["replicas"]["replicas"]}
        long_text = " ".join(["word"] * 40)  # 0.15 s per word: a 6 s stream
        body = {"model": "tts-1", "input": long_text, "voice": "alloy", "response_format": "pcm"}
        with pytest.raises(httpx.HTTPError), client.stream("POST", "/v1/audio/speech", json=body) as r:
            assert r.status_code == 200
            replica = r.headers["x-echoforge-replica"]
            chunks = r.iter_bytes()
            next(chunks)
            os.kill(pids[replica], signal.SIGKILL)
            for _ in chunks:
                pass
        sse = client.post("/v1/audio/speech", json={**body, "input": "one two three", "stream_format": "sse"})
        assert sse.status_code == 200 and sse.headers["x-echoforge-replica"] != replica  # the live replica
        assert json.loads(sse.text.strip().splitlines()[-1][6:])["type"] == "speech.audio.done"
        metrics = client.get("/metrics").text
        assert 'echoforge_replica_deaths_total{phase="mid_stream"} 1.0' in metrics
    finally:
        client.close()


# ---------------------------------------------------------------------------------- tiny CSM
def test_tiny_csm_on_two_replicas(cluster, tmp_path_factory):
    pytest.importorskip("transformers")
    tiny = _load("echoforge_tiny_models", TESTS / "csm" / "tiny_models.py")
    model_dir = tiny.build_tiny_csm(tmp_path_factory.mktemp("tiny-csm"))
    client = cluster.deploy(
        "csm",
        {
            "engine": "csm",
            "device": "cpu",
            "csm": {"model": str(model_dir), "compile": False, "watermark": False, "max_batch_size": 2},
            "generation": {"max_audio_length_ms": 1200},
        },
    )
    try:
        health = client.get("/api/health").json()
        assert health["engine"]["name"] == "csm" and health["engine"]["is_fallback"] is False
        assert health["streams"]["capacity"] == 4  # 2 replicas × 2 scheduler rows
        served = spread(client, n=8, text="Hi.", fmt="pcm")  # short: within the 1.2 s audio limit
        assert len(set(served)) == 2, served
        task = client.post(
            "/api/generate", json={"text": "hello world", "voice": "atlas", "seed": 1, "max_audio_length_ms": 640}
        ).json()
        done = wait_task(client, task["task_id"])
        assert done["status"] == "done", done
        audio, sr = load_audio(client.get(done["result_url"]).content)
        assert sr == 24_000 and 0 < audio.size <= 24_000 * 0.7 and np.isfinite(audio).all()
        # the voice prompt (Mimi codes) was encoded by a replica and cached in the shared data dir
        assert list((cluster.tmp / "csm" / "voices" / ".prompts").glob("atlas.*.pkl"))
    finally:
        client.close()


# ---------------------------------------------------------------------------------- options
def test_settings_drive_the_engine_deployment(cluster):
    from echoforge.deploy.app import engine_options, max_replicas, replica_slots

    fixed = load_settings(engine="espeak", server={"fallback_concurrency": 3}, ray={"replicas": 3, "num_cpus": 2})
    opts = engine_options(fixed)
    assert opts["num_replicas"] == 3 and opts["max_ongoing_requests"] == 3 == replica_slots(fixed)
    assert opts["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0}  # no GPUs here: CPU replicas
    auto = load_settings(
        engine="csm", csm={"max_batch_size": 8}, ray={"autoscaling_min": 1, "autoscaling_max": 4, "num_gpus": 1}
    )
    opts = engine_options(auto)
    assert "num_replicas" not in opts and max_replicas(opts) == 4
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    assert opts["ray_actor_options"]["num_gpus"] == 1 and opts["max_ongoing_requests"] == 8
    assert engine_options(load_settings(ray={"max_ongoing_requests": 16}))["max_ongoing_requests"] == 16
