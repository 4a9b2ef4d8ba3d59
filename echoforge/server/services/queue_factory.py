"""Which task queue the server and ``echoforge worker`` use: :func:`make_queue` picks the backend
``server.queue_backend`` names.

It lives apart from :mod:`echoforge.server.services.queue` (the interface and the SQLite backend)
so that the interface never imports a subclass of itself: ``redis_queue`` imports ``queue``, this
module imports both, nothing imports back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from echoforge.server.services.queue import SQLiteTaskQueue, TaskQueue

if TYPE_CHECKING:
    from echoforge.config import Settings


def make_queue(settings: Settings) -> TaskQueue:
    """The queue backend ``settings.server.queue_backend`` names."""
    s = settings.server
    if s.queue_backend == "redis":
        # redis-py is the optional `redis` extra: imported only when that backend is chosen.
        from echoforge.server.services.redis_queue import RedisTaskQueue

        return RedisTaskQueue(s.redis_url, max_pending=s.queue_max_pending, result_ttl_s=s.result_ttl_hours * 3600)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteTaskQueue(settings.data_dir, max_pending=s.queue_max_pending)
