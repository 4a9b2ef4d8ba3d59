"""The persistent SQLite queue: restart recovery after kill -9, graceful shutdown, cancel,
retries, queue limits, batching and result clean-up — with a real server and the sine engine."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import ServerProcess, assert_error, wait_task

from echoforge.audio import load_audio
from echoforge.server.services.queue import SQLiteTaskQueue

# 20 words at 0.05 s per word → each task takes ~1 s with the slow sine engine.
LONG = " ".join(f"word{i}" for i in range(20)) + "."


def _submit(client, n: int, text: str = LONG) -> list[str]:
    ids = []
    for i in range(n):
        r = client.post("/api/generate", json={"text": f"{text} {i}", "voice": "atlas", "format": "flac"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["task_id"])
    return ids


def test_kill_minus_9_mid_task_loses_nothing(tmp_path):
    server = ServerProcess(tmp_path, "sine", env={"SINE_DELAY": "0.05"}).start()
    with server.client() as client:
        ids = _submit(client, 3)
        wait_task(client, ids[0], until=("running",))
        time.sleep(0.3)  # mid-task
    server.kill9()
    restarted = ServerProcess(tmp_path, "sine", env={"SINE_DELAY": "0.02"})
    restarted.start()
    try:
        with restarted.client() as client:
            tasks = [wait_task(client, i, timeout=60) for i in ids]
            assert [t["status"] for t in tasks] == ["done"] * 3
            for t in tasks:
                audio, _ = load_audio(client.get(t["result_url"]).content)
                assert audio.size > 0
        assert "re-queued 1 task(s)" in restarted.log()
    finally:
        restarted.stop()


def test_graceful_shutdown_requeues_or_finishes(tmp_path):
    server = ServerProcess(tmp_path, "sine", env={"SINE_DELAY": "0.05"}).start()
    with server.client() as client:
        ids = _submit(client, 2)
        wait_task(client, ids[0], until=("running",))
    assert server.stop() is not None
    queue = SQLiteTaskQueue(tmp_path)  # opening it re-queues anything left running
    statuses = [queue.get(i).status for i in ids]
    queue.close()
    assert set(statuses) <= {"queued", "done"} and "queued" in statuses
    restarted = ServerProcess(tmp_path, "sine").start()
    try:
        with restarted.client() as client:
            assert [wait_task(client, i)["status"] for i in ids] == ["done", "done"]
    finally:
        restarted.stop()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    server = ServerProcess(
        tmp_path_factory.mktemp("slow"),
        "sine",
        {"server": {"queue_max_pending": 3, "task_retries": 1}},
        env={"SINE_DELAY": "0.05"},
    ).start()
    yield server
    server.stop()


def test_cancel_queued_and_running_tasks(slow_server):
    with slow_server.client() as client:
        running, queued = _submit(client, 2)
        wait_task(client, running, until=("running",))
        assert_error(client.get(f"/api/tasks/{running}/audio"), 409)
        assert client.delete(f"/api/tasks/{queued}").json()["status"] == "cancelled"
        assert client.delete(f"/api/tasks/{running}").json()["status"] == "cancelled"
        time.sleep(0.3)
        assert client.get(f"/api/tasks/{running}").json()["status"] == "cancelled"
        assert_error(client.get(f"/api/tasks/{running}/audio"), 409)
        # the worker is free again
        assert wait_task(client, _submit(client, 1, "Short one.")[0])["status"] == "done"


def test_queue_full_is_429_with_retry_after(slow_server):
    with slow_server.client() as client:
        ids, full = [], None
        for i in range(8):
            r = client.post("/api/generate", json={"text": f"{LONG} {i}", "voice": "atlas"})
            if r.status_code == 429:
                full = r
                break
            ids.append(r.json()["task_id"])
        assert full is not None
        err = assert_error(full, 429)
        assert err["code"] == "queue_full" and int(full.headers["Retry-After"]) >= 1
        for i in ids:
            client.delete(f"/api/tasks/{i}")


def test_transient_failures_are_retried(slow_server):
    with slow_server.client() as client:
        r = client.post("/api/generate", json={"text": "a transient-failure happens once", "voice": "atlas"})
        task = wait_task(client, r.json()["task_id"])
        assert task["status"] == "done", task


def test_progress_is_reported(slow_server):
    with slow_server.client() as client:
        task_id = _submit(client, 1)[0]
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            task = client.get(f"/api/tasks/{task_id}").json()
            seen.add(task["progress"])
            if task["status"] == "done":
                break
            time.sleep(0.05)
        assert any(0 < p < 1 for p in seen) and task["progress"] == 1.0


def test_requests_arriving_together_are_batched(tmp_path):
    server = ServerProcess(
        tmp_path,
        "sine",
        {"server": {"workers": 1}, "csm": {"max_batch_size": 4}},
        env={"SINE_BATCH": "1", "SINE_DELAY": "0.05"},
    ).start()
    try:
        with server.client() as client:
            ids = _submit(client, 6, "Batch me please.")
            assert all(wait_task(client, i)["status"] == "done" for i in ids)
            stats = client.get("/api/diagnostic").json()["synthesis"]
        assert stats["batching"] is True
        assert (
            stats["batched_requests"] >= 6
            and stats["largest_batch"] >= 2
            and stats["batches"] < stats["batched_requests"]
        )
    finally:
        server.stop()


def test_voice_prompt_is_encoded_once_and_cached_on_disk(slow_server):
    with slow_server.client() as client:
        for _ in range(2):
            assert (
                wait_task(
                    client, client.post("/api/generate", json={"text": "Prompted.", "voice": "orion"}).json()["task_id"]
                )["status"]
                == "done"
            )
    cached = list((slow_server.data_dir / "voices" / ".prompts").glob("orion.*.pkl"))
    assert len(cached) == 1


def test_result_cleanup_by_age_and_size(tmp_path):
    queue = SQLiteTaskQueue(tmp_path, max_pending=10)
    ids = []
    for i in range(3):
        task = queue.enqueue("generate", {"text": str(i)}, "wav")
        assert queue.claim("w", timeout=0.1).id == task.id
        queue.complete(task.id, b"x" * 1000, {"audio_s": 1.0})
        ids.append(task.id)
    assert queue.cleanup(max_age_s=3600, max_bytes=2500) == 1  # the oldest goes over the size budget
    assert queue.result(ids[0]) is None and queue.result(ids[2]) is not None
    queue._execute("UPDATE tasks SET finished_at = finished_at - 100")  # pretend they finished 100 s ago
    assert queue.cleanup(max_age_s=50, max_bytes=10**9) == 2  # results older than 50 s go…
    assert all(queue.result(i) is None for i in ids)
    assert queue.get(ids[1]).error == "result expired"  # …the records stay (until 7 × 50 s)
    queue.cleanup(max_age_s=10, max_bytes=10**9)  # 100 s > 7 × 10 s: the records go too
    assert all(queue.get(i) is None for i in ids)
    queue.close()


def test_same_request_same_audio(slow_server):
    with slow_server.client() as client:
        outs = []
        for _ in range(2):
            t = wait_task(
                client,
                client.post("/api/generate", json={"text": "Same words.", "voice": "atlas", "format": "wav"}).json()[
                    "task_id"
                ],
            )
            outs.append(load_audio(client.get(t["result_url"]).content)[0])
    np.testing.assert_array_equal(outs[0], outs[1])
