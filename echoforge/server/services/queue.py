"""The persistent task queue: one interface, two backends.

* :class:`SQLiteTaskQueue` (default) keeps tasks in ``<data_dir>/tasks.sqlite3`` (WAL mode)
  and results as files under ``<data_dir>/results/``. Tasks that were ``running`` when the
  process died are re-queued when the queue opens again, so nothing a user submitted is lost.
* :class:`echoforge.server.services.redis_queue.RedisTaskQueue` shares one queue between
  several worker processes (``echoforge worker``).

:func:`echoforge.server.services.queue_factory.make_queue` picks one from the settings.

The interface is synchronous and cheap (sub-millisecond calls); routers call it from
FastAPI's thread pool, and worker threads block in :meth:`TaskQueue.claim`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echoforge import metrics
from echoforge.server.errors import QueueFull

log = logging.getLogger("echoforge.server.queue")

FINAL_STATES = ("done", "failed", "cancelled")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


@dataclass
class TaskRecord:
    """A task as stored by every backend."""

    id: str
    kind: str
    request: dict[str, Any]
    format: str = "wav"
    status: str = "queued"
    progress: float = 0.0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    timings: dict[str, Any] = field(default_factory=dict)  # + "words" for tasks with timestamps
    attempts: int = 0
    worker: str | None = None
    result_bytes: int = 0

    def public(self) -> dict[str, Any]:
        """The API's Task object."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": round(self.progress, 4),
            "error": self.error,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "timings": {k: self.timings.get(k) for k in ("queue_s", "synth_s", "audio_s", "rtf")},
            "result_url": f"/api/tasks/{self.id}/audio" if self.status == "done" else None,
            "format": self.format,
            "request": self.request,
            "words": self.timings.get("words") if self.status == "done" else None,
            "captions_url": f"/api/tasks/{self.id}/captions" if self.status == "done" and "words" in self.timings else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: str | bytes) -> TaskRecord:
        return cls(**json.loads(raw))


def new_task_id() -> str:
    return "t_" + uuid.uuid4().hex[:20]


class TaskQueue(ABC):
    """What the server and the workers need from a queue."""

    backend: str = "?"

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending

    # -- producers (API)
    @abstractmethod
    def enqueue(self, kind: str, request: dict[str, Any], fmt: str) -> TaskRecord:
        """Store a new queued task; raise :class:`QueueFull` (429 + Retry-After) when full."""

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord | None: ...

    @abstractmethod
    def recent(self, limit: int = 20) -> list[TaskRecord]: ...

    @abstractmethod
    def cancel(self, task_id: str) -> TaskRecord | None:
        """Cancel a queued or running task (a running one stops at its next chunk)."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """``(queued, running)``."""

    @abstractmethod
    def result(self, task_id: str) -> bytes | None: ...

    # -- consumers (workers)
    @abstractmethod
    def claim(self, worker: str, timeout: float = 1.0) -> TaskRecord | None:
        """Atomically move the oldest queued task to ``running`` for ``worker``."""

    @abstractmethod
    def progress(self, task_id: str, value: float) -> None: ...

    @abstractmethod
    def is_cancelled(self, task_id: str) -> bool: ...

    @abstractmethod
    def complete(self, task_id: str, data: bytes, timings: dict[str, float | None]) -> None: ...

    @abstractmethod
    def fail(self, task_id: str, error: str, *, retry: bool, max_retries: int) -> str:
        """Record a failure; re-queue when ``retry`` and attempts remain. Returns the new status."""

    @abstractmethod
    def requeue(self, task_id: str) -> None:
        """Put a running task back (graceful shutdown) without counting an attempt."""

    @abstractmethod
    def cleanup(self, max_age_s: float, max_bytes: int) -> int:
        """Drop results older than ``max_age_s`` or beyond ``max_bytes`` in total; returns how many."""

    def acknowledge_cancel(self, task_id: str) -> None:  # noqa: B027 - optional hook, a no-op by default
        """The worker stopped working on a cancelled task (Redis releases its claim)."""

    def heartbeat(self, worker: str) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Tell the queue ``worker`` is alive (Redis uses it to recover crashed workers)."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections."""

    def retry_after(self) -> float:
        """A rough guess, in seconds, of when a slot frees up."""
        queued, running = self.counts()
        return float(min(60, 2 + queued + running))

    def _check_capacity(self) -> None:
        queued, _ = self.counts()
        if queued >= self.max_pending:
            metrics.observe_task("rejected")
            raise QueueFull(
                f"the task queue is full ({queued} pending, limit {self.max_pending}); retry later",
                retry_after=self.retry_after(),
            )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    timings TEXT NOT NULL DEFAULT '{}',
    format TEXT NOT NULL,
    request TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    result_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_status_created ON tasks(status, created_at);
"""


class SQLiteTaskQueue(TaskQueue):
    """Embedded queue: SQLite (WAL) + result files. One process owns it."""

    backend = "sqlite"

    def __init__(self, data_dir: Path, max_pending: int = 100) -> None:
        super().__init__(max_pending)
        self.data_dir = Path(data_dir)
        self.results_dir = self.data_dir / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "tasks.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        recovered = self._execute(
            "UPDATE tasks SET status='queued', worker=NULL, progress=0 WHERE status='running'"
        ).rowcount
        if recovered:
            log.warning("re-queued %d task(s) that were running when the server last stopped", recovered)

    def _execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    @staticmethod
    def _row(row: sqlite3.Row | None) -> TaskRecord | None:
        if row is None:
            return None
        data = dict(row)
        data["request"] = json.loads(data["request"])
        data["timings"] = json.loads(data["timings"])
        return TaskRecord(**data)

    def _result_path(self, task_id: str) -> Path:
        return self.results_dir / f"{task_id}.bin"

    def enqueue(self, kind: str, request: dict[str, Any], fmt: str) -> TaskRecord:
        self._check_capacity()
        task = TaskRecord(id=new_task_id(), kind=kind, request=request, format=fmt)
        with self._wakeup:
            self._db.execute(
                "INSERT INTO tasks (id, kind, status, created_at, format, request) VALUES (?, ?, 'queued', ?, ?, ?)",
                (task.id, kind, task.created_at, fmt, json.dumps(request)),
            )
            self._wakeup.notify()
        return task

    def get(self, task_id: str) -> TaskRecord | None:
        return self._row(self._execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone())

    def recent(self, limit: int = 20) -> list[TaskRecord]:
        rows = self._execute("SELECT * FROM tasks ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [t for r in rows if (t := self._row(r))]

    def cancel(self, task_id: str) -> TaskRecord | None:
        self._execute(
            "UPDATE tasks SET status='cancelled', finished_at=? WHERE id=? AND status IN ('queued','running')",
            (time.time(), task_id),
        )
        return self.get(task_id)

    def counts(self) -> tuple[int, int]:
        rows = dict(
            self._execute(
                "SELECT status, COUNT(*) FROM tasks WHERE status IN ('queued','running') GROUP BY status"
            ).fetchall()
        )
        return int(rows.get("queued", 0)), int(rows.get("running", 0))

    def result(self, task_id: str) -> bytes | None:
        path = self._result_path(task_id)
        return path.read_bytes() if path.is_file() else None

    def claim(self, worker: str, timeout: float = 1.0) -> TaskRecord | None:
        deadline = time.monotonic() + timeout
        with self._wakeup:
            while True:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT id FROM tasks WHERE status='queued' ORDER BY created_at LIMIT 1"
                    ).fetchone()
                    if row is not None:
                        self._db.execute(
                            "UPDATE tasks SET status='running', started_at=?, worker=?, attempts=attempts+1, progress=0 WHERE id=?",
                            (time.time(), worker, row["id"]),
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                if row is not None:
                    return self._row(self._db.execute("SELECT * FROM tasks WHERE id=?", (row["id"],)).fetchone())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._wakeup.wait(remaining)

    def progress(self, task_id: str, value: float) -> None:
        self._execute(
            "UPDATE tasks SET progress=? WHERE id=? AND status='running'", (min(max(value, 0.0), 1.0), task_id)
        )

    def is_cancelled(self, task_id: str) -> bool:
        row = self._execute("SELECT status FROM tasks WHERE id=?", (task_id,)).fetchone()
        return row is None or row["status"] == "cancelled"

    def complete(self, task_id: str, data: bytes, timings: dict[str, float | None]) -> None:
        path = self._result_path(task_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        cur = self._execute(
            "UPDATE tasks SET status='done', progress=1, finished_at=?, timings=?, result_bytes=?, error=NULL "
            "WHERE id=? AND status='running'",
            (time.time(), json.dumps(timings), len(data), task_id),
        )
        if cur.rowcount == 0:  # cancelled meanwhile: keep it cancelled, drop the audio
            path.unlink(missing_ok=True)

    def fail(self, task_id: str, error: str, *, retry: bool, max_retries: int) -> str:
        task = self.get(task_id)
        if task is None or task.status != "running":
            return task.status if task else "failed"
        if retry and task.attempts <= max_retries:
            self._execute(
                "UPDATE tasks SET status='queued', worker=NULL, error=?, progress=0 WHERE id=? AND status='running'",
                (error, task_id),
            )
            with self._wakeup:
                self._wakeup.notify()
            return "queued"
        self._execute(
            "UPDATE tasks SET status='failed', error=?, finished_at=? WHERE id=? AND status='running'",
            (error, time.time(), task_id),
        )
        return "failed"

    def requeue(self, task_id: str) -> None:
        self._execute(
            "UPDATE tasks SET status='queued', worker=NULL, progress=0, attempts=MAX(attempts-1, 0) WHERE id=? AND status='running'",
            (task_id,),
        )

    def cleanup(self, max_age_s: float, max_bytes: int) -> int:
        """Expire result files by age and total size; forget finished tasks after 7× the age."""
        now = time.time()
        rows = self._execute(
            "SELECT id, finished_at, result_bytes FROM tasks WHERE status='done' AND result_bytes > 0 ORDER BY finished_at DESC"
        ).fetchall()
        total, removed = 0, 0
        for row in rows:
            total += row["result_bytes"]
            if now - (row["finished_at"] or now) > max_age_s or total > max_bytes:
                self._result_path(row["id"]).unlink(missing_ok=True)
                self._execute("UPDATE tasks SET result_bytes=0, error='result expired' WHERE id=?", (row["id"],))
                removed += 1
        # Task records themselves (a few hundred bytes each) go after 7× the result age.
        self._execute(
            "DELETE FROM tasks WHERE status IN ('done','failed','cancelled') AND COALESCE(finished_at, created_at) < ?",
            (now - max(max_age_s, 0) * 7,),
        )
        return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()

