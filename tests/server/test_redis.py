"""Redis queue backend: a real ``redis-server`` on a free loopback port, the server plus an
``echoforge worker`` process sharing one queue, and recovery of tasks from a dead worker."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import HERE, ServerProcess, assert_error, child_env, free_port, wait_task, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed (apt-get install redis-server)"
)]
redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install 'echoforge[redis]')")

LONG = " ".join(f"word{i}" for i in range(16)) + "."


def start_redis(workdir) -> tuple[subprocess.Popen, str]:
    """A throw-away ``redis-server`` on a free loopback port, answering PING; ``(process, url)``."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(workdir)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)

    def answers() -> bool:
        assert proc.poll() is None, "redis-server exited"
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(answers, what="redis-server answering PING")
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def flushed(redis_url):
    redis.Redis.from_url(redis_url).flushall()
    return redis_url


def test_server_and_worker_process_share_the_queue(tmp_path, flushed):
    settings = {"server": {"queue_backend": "redis", "redis_url": flushed}}
    # The server's engine is gated (closed until the worker has done its share); the worker's is not.
    server_gate = tmp_path / "server-gate"
    server_gate.mkdir()
    server = ServerProcess(tmp_path, "sine", settings, env={"SINE_GATE": str(server_gate)}).start()
    worker_log = tmp_path / "worker.log"
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        "from echoforge.engines import register_engine; register_engine('sine', 'sine_engine:SineEngine.from_settings'); "
        "from echoforge.cli import app; app(['worker', '--engine', 'sine'])"
    )
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", code],
            env=child_env(
                ECHOFORGE_DATA_DIR=str(tmp_path),
                ECHOFORGE_SERVER__QUEUE_BACKEND="redis",
                ECHOFORGE_SERVER__REDIS_URL=flushed,
            ),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            def worker_started() -> bool:
                assert worker.poll() is None, worker_log.read_text()
                return b"started" in worker_log.read_bytes()

            wait_until(worker_started, what="the worker process")
            with server.client() as client:
                assert client.get("/api/health").json()["queue"]["backend"] == "redis"
                ids = [
                    client.post("/api/generate", json={"text": f"{LONG} {i}", "voice": "atlas"}).json()["task_id"]
                    for i in range(4)
                ]
                # The server's workers (2 at most) hold tasks at their gate: the worker process
                # does the rest. Then the gate opens and the server finishes its share.
                wait_until(lambda: (server_gate / "blocked").exists(), what="the server mid-task")
                wait_until(lambda: b"task done" in worker_log.read_bytes(), what="a task done by the worker")
                (server_gate / "open").touch()
                tasks = [wait_task(client, i) for i in ids]
                assert [t["status"] for t in tasks] == ["done"] * 4
                assert len(client.get(tasks[0]["result_url"]).content) > 1000
                listed = {t["id"] for t in client.get("/api/tasks").json()["tasks"]}
                assert set(ids) <= listed
        finally:
            worker.terminate()
            worker.wait(30)
            (server_gate / "open").touch()
            server.stop()
    assert "task done" in worker_log.read_text(), worker_log.read_text()  # the worker process did real work
    assert "task done" in server.log()


def test_tasks_of_a_dead_worker_are_recovered(flushed):
    from echoforge.server.services.redis_queue import RedisTaskQueue

    queue = RedisTaskQueue(flushed, max_pending=10)
    dead = queue.enqueue("generate", {"text": "a"}, "wav")
    alive = queue.enqueue("generate", {"text": "b"}, "wav")
    queue.heartbeat("livepool")
    assert queue.claim("deadpool/0", timeout=1).id == dead.id  # never sends a heartbeat
    assert queue.claim("livepool/0", timeout=1).id == alive.id
    assert queue.counts() == (0, 2)
    assert queue.recover_stale() == 1
    assert queue.get(dead.id).status == "queued" and queue.get(alive.id).status == "running"
    again = queue.claim("livepool/1", timeout=1)
    assert again.id == dead.id and again.attempts == 2
    queue.complete(again.id, b"audio", {"audio_s": 1.0})
    assert queue.result(again.id) == b"audio" and queue.get(again.id).status == "done"
    queue.close()


def test_cancel_retry_and_limits(flushed):
    from echoforge.server.errors import QueueFull
    from echoforge.server.services.redis_queue import RedisTaskQueue

    queue = RedisTaskQueue(flushed, max_pending=2)
    a = queue.enqueue("generate", {"text": "a"}, "wav")
    b = queue.enqueue("generate", {"text": "b"}, "wav")
    with pytest.raises(QueueFull):
        queue.enqueue("generate", {"text": "c"}, "wav")
    assert queue.cancel(a.id).status == "cancelled"
    claimed = queue.claim("w/0", timeout=1)
    assert claimed.id == b.id  # the cancelled task is skipped
    assert queue.fail(b.id, "flaky", retry=True, max_retries=1) == "queued"
    assert queue.claim("w/0", timeout=1).id == b.id
    assert queue.fail(b.id, "flaky again", retry=True, max_retries=1) == "failed"
    assert queue.get(b.id).error == "flaky again"
    assert queue.counts() == (0, 0)
    queue.close()


def test_cancelling_a_running_task_releases_the_worker_claim(flushed):
    from echoforge.server.services.redis_queue import RedisTaskQueue

    queue = RedisTaskQueue(flushed, max_pending=5)
    task = queue.enqueue("generate", {"text": "a"}, "wav")
    queue.heartbeat("pool")
    assert queue.claim("pool/0", timeout=1).id == task.id
    assert queue.cancel(task.id).status == "cancelled" and queue.is_cancelled(task.id)
    queue.acknowledge_cancel(task.id)  # what the worker does when it notices
    assert queue.counts() == (0, 0)
    queue.complete(task.id, b"late", {})  # a late completion never overrides the cancel
    assert queue.get(task.id).status == "cancelled" and queue.result(task.id) is None
    queue.close()


def test_redis_down_is_503_with_retry_after(tmp_path):
    redis_proc, url = start_redis(tmp_path)
    try:
        server = ServerProcess(tmp_path, "espeak", {"server": {"queue_backend": "redis", "redis_url": url}}).start()
        try:
            redis_proc.terminate()
            redis_proc.wait(10)
            with server.client() as c:
                r = c.get("/api/health")
                assert r.status_code == 503 and r.headers["Retry-After"]
                health = r.json()
                assert health["status"] == "degraded" and health["queue"]["reachable"] is False
                assert "unreachable" in health["queue"]["error"]
                for r in (c.post("/api/generate", json={"text": "Hello."}), c.get("/api/tasks")):
                    err = assert_error(r, 503)
                    assert err["code"] == "queue_unavailable" and r.headers["Retry-After"]
                assert c.post(
                    "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Still speaking.", "response_format": "wav"}
                ).status_code == 200
            assert "Traceback" not in server.log()
        finally:
            server.stop()
    finally:
        if redis_proc.poll() is None:
            redis_proc.kill()
