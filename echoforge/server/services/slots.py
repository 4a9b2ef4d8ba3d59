"""Engine slots for the fallback engines: :class:`SlotGate` hands out ``capacity`` slots first
come, first served, with a bounded wait queue (:class:`GateFull` when it is full). Used by
:mod:`echoforge.server.services.synthesis`, the only place the server touches an engine.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator


class Cancelled(Exception):
    """Synthesis stopped because the task was cancelled or the server is shutting down."""


class GateFull(Exception):
    """Every slot is busy and the wait queue is full."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} requests already waiting")
        self.waiting = waiting


class _Ticket:
    __slots__ = ("granted", "state")

    def __init__(self) -> None:
        self.granted = threading.Event()
        self.state = "waiting"  # waiting → granted → released, or waiting → released


class SlotGate:
    """``capacity`` engine slots handed out first come, first served, with a bounded wait queue.

    :meth:`reserve` never blocks: it grants a slot or queues a ticket (or, with ``admit=True``
    and ``max_waiting`` reached, raises :class:`GateFull`); :meth:`wait` blocks until the ticket
    is granted; :meth:`release` frees a granted slot or withdraws a queued ticket (idempotent).
    Reserving on the event loop and waiting in a worker thread keeps the order of arrival.
    """

    def __init__(self, capacity: int, max_waiting: int | None = None) -> None:
        self.capacity = max(1, int(capacity))
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._in_use = 0
        self._queue: collections.deque[_Ticket] = collections.deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def reserve(self, *, admit: bool = False) -> _Ticket:
        ticket = _Ticket()
        with self._lock:
            if self._in_use < self.capacity and not self._queue:
                self._in_use += 1
                ticket.state = "granted"
                ticket.granted.set()
            elif admit and self.max_waiting is not None and len(self._queue) >= self.max_waiting:
                raise GateFull(len(self._queue))
            else:
                self._queue.append(ticket)
        return ticket

    def wait(self, ticket: _Ticket, should_stop: Callable[[], bool] | None = None, poll_s: float = 0.1) -> bool:
        """Block until granted (True), or until ``should_stop()`` (False; the ticket is withdrawn)."""
        while not ticket.granted.wait(poll_s if should_stop else None):
            if should_stop is not None and should_stop():
                self.release(ticket)
                return ticket.state == "granted"  # pragma: no cover - granted in the same instant
        return True

    def release(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket.state == "waiting":
                with contextlib.suppress(ValueError):
                    self._queue.remove(ticket)
                ticket.state = "released"
            elif ticket.state == "granted":
                ticket.state = "released"
                self._in_use -= 1
                while self._in_use < self.capacity and self._queue:
                    nxt = self._queue.popleft()
                    nxt.state = "granted"
                    self._in_use += 1
                    nxt.granted.set()

    @contextlib.contextmanager
    def hold(self, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """One slot for the duration of the block; :class:`Cancelled` if stopped while waiting."""
        ticket = self.reserve()
        try:
            if not self.wait(ticket, should_stop):
                raise Cancelled("cancelled while waiting for an engine slot")
            yield
        finally:
            self.release(ticket)
