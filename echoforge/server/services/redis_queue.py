"""Redis task queue for scale-out: several ``echoforge worker`` processes (one per GPU) share it.

Why plain redis-py and a reliable-queue pattern rather than a job framework:

* RQ forks a "work horse" process per job: the CSM model would be re-initialised per task and
  CUDA does not survive a fork. Celery brings a broker abstraction, a result backend and a
  process model we would mostly fight. arq is asyncio-only and its jobs are coroutines, while
  our engine is blocking code that must stay off the event loop.
* What we need is small and well understood: ``BLMOVE pending → processing:<worker>`` hands a
  task to exactly one worker atomically; a per-process heartbeat key with a TTL marks live
  workers; any process re-queues tasks held by a worker whose heartbeat expired (crash,
  ``kill -9``, lost machine). Status changes are conditional (a Lua script), so a cancel that
  races a completion is never overwritten. redis-py is the official, well-kept client.

Keys (prefix ``echoforge:``): ``task:<id>`` (hash), ``pending`` (list), ``processing:<worker>``
(list), ``running`` (set), ``alive:<pool>`` (heartbeat), ``recent`` (zset by creation time),
``result:<id>`` (audio bytes, expiring after ``server.result_ttl_hours``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from echoforge.server.services.queue import FINAL_STATES, TaskQueue, TaskRecord, new_task_id

log = logging.getLogger("echoforge.server.queue.redis")

HEARTBEAT_TTL_S = 15
P = "echoforge:"

# Set fields only when the task's status is one of ARGV[1] ("|a|b|"); returns 1 if it did.
_TRANSITION = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or not string.find(ARGV[1], '|' .. s .. '|', 1, true) then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

_FIELDS = (
    "id",
    "kind",
    "request",
    "format",
    "status",
    "progress",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "timings",
    "attempts",
    "worker",
    "result_bytes",
)


def _enc(record: TaskRecord) -> dict[str, str]:
    return {f: (record.status if f == "status" else json.dumps(getattr(record, f))) for f in _FIELDS}


def _dec(raw: dict[bytes, bytes]) -> TaskRecord | None:
    if not raw:
        return None
    data = {k.decode(): v.decode() for k, v in raw.items()}
    return TaskRecord(**{f: (data[f] if f == "status" else json.loads(data[f])) for f in _FIELDS if f in data})


class RedisTaskQueue(TaskQueue):
    backend = "redis"

    def __init__(self, url: str, max_pending: int = 100, result_ttl_s: float = 86_400) -> None:
        super().__init__(max_pending)
        self.url = url
        self.result_ttl_s = int(result_ttl_s)
        self.r = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)
        try:
            self.r.ping()
        except redis.RedisError as exc:
            raise RuntimeError(f"cannot reach Redis at {url}: {exc}") from None
        self._transition = self.r.register_script(_TRANSITION)
        self.recover_stale()

    # ---------------------------------------------------------------- helpers
    def _key(self, task_id: str) -> str:
        return f"{P}task:{task_id}"

    def _set_if(self, task_id: str, allowed: tuple[str, ...], **fields: Any) -> bool:
        args = ["|" + "|".join(allowed) + "|"]
        for k, v in fields.items():
            args += [k, v if k == "status" else json.dumps(v)]
        return bool(self._transition(keys=[self._key(task_id)], args=args))

    def _release(self, task: TaskRecord) -> None:
        pipe = self.r.pipeline()
        if task.worker:
            pipe.lrem(f"{P}processing:{task.worker}", 0, task.id)
        pipe.srem(f"{P}running", task.id)
        pipe.execute()

    # ---------------------------------------------------------------- producers
    def enqueue(self, kind: str, request: dict[str, Any], fmt: str) -> TaskRecord:
        self._check_capacity()
        task = TaskRecord(id=new_task_id(), kind=kind, request=request, format=fmt)
        pipe = self.r.pipeline()
        pipe.hset(self._key(task.id), mapping=_enc(task))
        pipe.zadd(f"{P}recent", {task.id: task.created_at})
        pipe.lpush(f"{P}pending", task.id)
        pipe.execute()
        return task

    def get(self, task_id: str) -> TaskRecord | None:
        return _dec(self.r.hgetall(self._key(task_id)))

    def recent(self, limit: int = 20) -> list[TaskRecord]:
        ids = self.r.zrevrange(f"{P}recent", 0, limit - 1)
        pipe = self.r.pipeline()
        for i in ids:
            pipe.hgetall(self._key(i.decode()))
        return [t for raw in pipe.execute() if (t := _dec(raw))]

    def cancel(self, task_id: str) -> TaskRecord | None:
        if self._set_if(task_id, ("queued", "running"), status="cancelled", finished_at=time.time()):
            self.r.lrem(f"{P}pending", 0, task_id)
            task = self.get(task_id)
            if task and task.worker is None:
                self.r.srem(f"{P}running", task_id)
        return self.get(task_id)

    def counts(self) -> tuple[int, int]:
        pipe = self.r.pipeline()
        pipe.llen(f"{P}pending")
        pipe.scard(f"{P}running")
        queued, running = pipe.execute()
        return int(queued), int(running)

    def result(self, task_id: str) -> bytes | None:
        return self.r.get(f"{P}result:{task_id}")

    # ---------------------------------------------------------------- consumers
    def claim(self, worker: str, timeout: float = 1.0) -> TaskRecord | None:
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.01, deadline - time.monotonic())
            raw = self.r.blmove(f"{P}pending", f"{P}processing:{worker}", wait, "RIGHT", "LEFT")
            if raw is None:
                return None
            task_id = raw.decode()
            task = self.get(task_id)
            if task is None or task.status != "queued":  # cancelled or expired meanwhile
                self.r.lrem(f"{P}processing:{worker}", 0, task_id)
                if time.monotonic() >= deadline:
                    return None
                continue
            self._set_if(
                task_id,
                ("queued",),
                status="running",
                started_at=time.time(),
                worker=worker,
                attempts=task.attempts + 1,
                progress=0.0,
            )
            self.r.sadd(f"{P}running", task_id)
            return self.get(task_id)

    def progress(self, task_id: str, value: float) -> None:
        self._set_if(task_id, ("running",), progress=min(max(value, 0.0), 1.0))

    def is_cancelled(self, task_id: str) -> bool:
        status = self.r.hget(self._key(task_id), "status")
        return status is None or status == b"cancelled"

    def complete(self, task_id: str, data: bytes, timings: dict[str, float | None]) -> None:
        task = self.get(task_id)
        if task is None:
            return
        self.r.set(f"{P}result:{task_id}", data, ex=self.result_ttl_s)
        ok = self._set_if(
            task_id,
            ("running",),
            status="done",
            progress=1.0,
            finished_at=time.time(),
            timings=timings,
            result_bytes=len(data),
            error=None,
        )
        if not ok:
            self.r.delete(f"{P}result:{task_id}")
        self._release(task)

    def fail(self, task_id: str, error: str, *, retry: bool, max_retries: int) -> str:
        task = self.get(task_id)
        if task is None or task.status != "running":
            return task.status if task else "failed"
        if retry and task.attempts <= max_retries:
            if self._set_if(task_id, ("running",), status="queued", worker=None, error=error, progress=0.0):
                self._release(task)
                self.r.lpush(f"{P}pending", task_id)
            return "queued"
        self._set_if(task_id, ("running",), status="failed", error=error, finished_at=time.time())
        self._release(task)
        return "failed"

    def requeue(self, task_id: str) -> None:
        task = self.get(task_id)
        if task is None:
            return
        if self._set_if(
            task_id, ("running",), status="queued", worker=None, progress=0.0, attempts=max(task.attempts - 1, 0)
        ):
            self._release(task)
            self.r.rpush(f"{P}pending", task_id)  # the right end is taken next

    def acknowledge_cancel(self, task_id: str) -> None:
        task = self.get(task_id)
        if task is not None:
            self._release(task)

    def heartbeat(self, worker: str) -> None:
        self.r.set(f"{P}alive:{worker}", "1", ex=HEARTBEAT_TTL_S)
        self.recover_stale()

    def recover_stale(self) -> int:
        """Re-queue tasks held by workers whose heartbeat expired (crashed or killed)."""
        moved = 0
        for key in self.r.scan_iter(match=f"{P}processing:*", count=100):
            worker = key.decode()[len(f"{P}processing:") :]
            pool = worker.rsplit("/", 1)[0]
            if self.r.exists(f"{P}alive:{pool}"):
                continue
            while (raw := self.r.lmove(key, f"{P}pending", "LEFT", "RIGHT")) is not None:
                task_id = raw.decode()
                self._set_if(task_id, ("running",), status="queued", worker=None, progress=0.0)
                self.r.srem(f"{P}running", task_id)
                moved += 1
        if moved:
            log.warning("re-queued %d task(s) from worker(s) that stopped without finishing them", moved)
        return moved

    def cleanup(self, max_age_s: float, max_bytes: int) -> int:
        """Results expire on their own (TTL); task records of finished work go after 7× that age."""
        cutoff = time.time() - max_age_s * 7
        removed = 0
        for raw in self.r.zrangebyscore(f"{P}recent", "-inf", cutoff, start=0, num=1000):
            task_id = raw.decode()
            status = self.r.hget(self._key(task_id), "status")
            if status is None or status.decode() in FINAL_STATES:
                self.r.delete(self._key(task_id), f"{P}result:{task_id}")
                self.r.zrem(f"{P}recent", task_id)
                removed += 1
        return removed

    def close(self) -> None:
        self.r.close()
