"""The persistent SQLite queue: restart recovery after kill -9, graceful shutdown, cancel,
retries, queue limits, batching and result clean-up — with the real app and the sine engine.

Time is driven, not waited for: the engine is gated (in-process: :class:`GatedSineEngine`; in a
child process: ``SINE_GATE``), so "a task is running now" is true by construction at any speed.
Only kill -9 and SIGTERM use real server processes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import AppServer, ServerProcess, assert_error, wait_task, wait_until
from sine_engine import GatedSineEngine

from echoforge.audio import load_audio
from echoforge.server.services.queue import SQLiteTaskQueue

# 20 words: 20 chunks, each one through the engine's gate.
LONG = " ".join(f"word{i}" for i in range(20)) + "."


def _submit(client, n: int, text: str = LONG) -> list[str]:
    ids = []
    for i in range(n):
        r = client.post("/api/generate", json={"text": f"{text} {i}", "voice": "atlas", "format": "flac"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["task_id"])
    return ids


def _file_gate(tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    return gate, {"SINE_GATE": str(gate)}


@pytest.mark.integration
def test_kill_minus_9_mid_task_loses_nothing(tmp_path):
    gate, env = _file_gate(tmp_path)
    server = ServerProcess(tmp_path, "sine", env=env).start()
    with server.client() as client:
        ids = _submit(client, 3)
        wait_task(client, ids[0], until=("running",))
        wait_until(lambda: (gate / "blocked").exists(), what="the engine mid-task")
    server.kill9()  # task 0 is mid-synthesis (its engine waits at the gate), tasks 1-2 queued
    restarted = ServerProcess(tmp_path, "sine")
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


@pytest.mark.integration
def test_graceful_shutdown_requeues_or_finishes(tmp_path):
    gate, env = _file_gate(tmp_path)
    server = ServerProcess(tmp_path, "sine", {"server": {"shutdown_grace_s": 1}}, env=env).start()
    with server.client() as client:
        ids = _submit(client, 2)
        wait_task(client, ids[0], until=("running",))
        wait_until(lambda: (gate / "blocked").exists(), what="the engine mid-task")
    assert server.stop() is not None  # SIGTERM while task 0 runs (and never finishes: it is re-queued)
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


@pytest.fixture()
def gated(tmp_path):
    """The real app in this process on a :class:`GatedSineEngine` (closed: the test lets chunks through)."""
    engine = GatedSineEngine()
    server = AppServer(tmp_path, engine, {"server": {"queue_max_pending": 3, "task_retries": 1, "workers": 1}})
    server.engine = engine
    with server.start():
        yield server
        engine.open()  # let whatever still runs finish before shutdown


@pytest.fixture()
def slow_server(gated):
    """The gated server with its gate open: tasks run to the end as fast as the machine allows."""
    gated.engine.open()
    return gated


def test_cancel_queued_and_running_tasks(gated):
    with gated.client() as client:
        running, queued = _submit(client, 2)
        wait_task(client, running, until=("running",))
        gated.engine.wait_blocked(1)  # the running task is mid-synthesis, the other one queued
        assert_error(client.get(f"/api/tasks/{running}/audio"), 409)
        assert client.delete(f"/api/tasks/{queued}").json()["status"] == "cancelled"
        assert client.delete(f"/api/tasks/{running}").json()["status"] == "cancelled"
        gated.engine.open()
        short = _submit(client, 1, "Short one.")[0]
        # the worker is free again: the next task runs and finishes
        assert wait_task(client, short)["status"] == "done"
        assert client.get(f"/api/tasks/{running}").json()["status"] == "cancelled"
        assert_error(client.get(f"/api/tasks/{running}/audio"), 409)
        assert client.get(f"/api/tasks/{queued}").json()["status"] == "cancelled"
        assert all(not t.startswith(LONG + " 1") for t in gated.engine.texts)  # the cancelled queued task never ran


def test_queue_full_is_429_with_retry_after(gated):
    with gated.client() as client:
        ids, full = [], None
        for i in range(8):  # nothing finishes: the engine's gate is closed
            r = client.post("/api/generate", json={"text": f"{LONG} {i}", "voice": "atlas"})
            if r.status_code == 429:
                full = r
                break
            ids.append(r.json()["task_id"])
        assert full is not None and len(ids) in (3, 4)  # 3 pending (+ 1 a worker may have claimed)
        err = assert_error(full, 429)
        assert err["code"] == "queue_full" and int(full.headers["Retry-After"]) >= 1
        for i in ids:
            client.delete(f"/api/tasks/{i}")


def test_transient_failures_are_retried(slow_server):
    with slow_server.client() as client:
        r = client.post("/api/generate", json={"text": "a transient-failure happens once", "voice": "atlas"})
        task = wait_task(client, r.json()["task_id"])
        assert task["status"] == "done", task


def test_progress_is_reported(gated):
    with gated.client() as client:
        task_id = _submit(client, 1)[0]
        gated.engine.allow(10)  # half of the 20 chunks
        gated.engine.wait_blocked(1)  # …and the engine waits for the 11th
        mid = wait_until(lambda: (p := client.get(f"/api/tasks/{task_id}").json()["progress"]) > 0 and p, what="progress")
        assert 0 < mid < 1
        gated.engine.open()
        task = wait_task(client, task_id)
        assert task["status"] == "done" and task["progress"] == 1.0


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


@pytest.mark.integration
def test_port_opens_before_requeued_tasks_run(tmp_path):
    queue = SQLiteTaskQueue(tmp_path)
    body = {"text": LONG, "voice": "atlas", "context": [], "format": "wav"}
    task = queue.enqueue("generate", body, "wav")
    queue.close()
    gate, env = _file_gate(tmp_path)  # the re-queued task can never finish before we look
    server = ServerProcess(tmp_path, "sine", env=env).start()
    try:
        with server.client() as c:
            status = c.get(f"/api/tasks/{task.id}").json()
            assert status["status"] in ("queued", "running"), status["error"]
            c.delete(f"/api/tasks/{task.id}")
    finally:
        (gate / "open").touch()
        server.stop()
