"""The processor base class and thread helpers (pipecat-style, trimmed to what the agent needs).

A :class:`FrameProcessor` owns an ordered queue and one task that drains it. System frames skip
the queue and are handled at once, in the caller's task. An :class:`InterruptionFrame` travelling
downstream cancels the frame in progress, drops every queued data/control frame and restarts the
task — that is how one barge-in flushes STT, LLM, sentence and TTS work in a single pass.

Blocking work (STT, RAG, LLM, TTS) never runs on the event loop: :func:`iterate_in_thread` runs a
synchronous generator in a worker thread and hands its items to the loop; a ``threading.Event``
tells the generator to stop when the consumer is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from echoforge.agent.frames import ErrorFrame, Frame, InterruptionFrame, SystemFrame

log = logging.getLogger("echoforge.agent")
T = TypeVar("T")


class Clock:
    """Wall time for the stages that pace themselves (the audio output): ``now()`` and ``sleep()``.

    The default is the monotonic clock; tests pass :class:`echoforge.agent.testing.FakeClock`,
    whose time moves only when the test says so, so "still playing" never depends on how fast
    the machine is.
    """

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class Direction(enum.Enum):
    DOWNSTREAM = "down"
    UPSTREAM = "up"


DOWN, UP = Direction.DOWNSTREAM, Direction.UPSTREAM
Sink = Callable[[Frame, Direction], Awaitable[None]]


async def cancel_task(task: asyncio.Task | None, timeout: float = 2.0) -> None:
    """Cancel ``task`` and wait (bounded) for it to finish; tolerates code that swallows cancellation."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
        await asyncio.wait_for(asyncio.shield(task), timeout)


async def iterate_in_thread(make_iter: Callable[[], Iterator[T]], stop: threading.Event) -> AsyncIterator[T]:
    """Run a blocking iterator in a daemon thread and yield its items on the event loop.

    Args:
        make_iter: builds the iterator (called in the worker thread).
        stop: set when the consumer goes away (cancellation, early exit); the worker stops
            after its current item. The iterator itself may also watch it to stop sooner.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def put(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under us
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def worker() -> None:
        it = None
        try:
            it = make_iter()
            for item in it:
                put(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer
            put((done, exc))
            return
        finally:
            close = getattr(it, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
        put((done, None))

    thread = threading.Thread(target=worker, name="agent-worker", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is done:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stop.set()


class FrameProcessor:
    """One pipeline stage. Override :meth:`process_frame`; call :meth:`push_frame` to pass frames on."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__
        self._next: FrameProcessor | None = None
        self._prev: FrameProcessor | None = None
        self._down_sink: Sink | None = None
        self._up_sink: Sink | None = None
        self._queue: asyncio.Queue[tuple[Frame, Direction]] | None = None
        self._task: asyncio.Task | None = None

    # -- wiring / lifecycle ------------------------------------------------------------------------
    def link(self, nxt: FrameProcessor) -> FrameProcessor:
        self._next, nxt._prev = nxt, self
        return nxt

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-task")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None

    # -- frame flow --------------------------------------------------------------------------------
    async def queue_frame(self, frame: Frame, direction: Direction = DOWN) -> None:
        """Entry point: system frames are handled now, others in order by the processor's task."""
        if isinstance(frame, SystemFrame):
            await self._handle(frame, direction)
        else:
            assert self._queue is not None, f"{self.name} was not started"
            self._queue.put_nowait((frame, direction))

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            frame, direction = await self._queue.get()
            await self._handle(frame, direction)

    async def _handle(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, InterruptionFrame) and direction is DOWN:
            await self._start_interruption()
        try:
            await self.process_frame(frame, direction)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s failed on %s", self.name, frame.name)
            await self.push_error(f"{self.name}: {exc}")

    async def _start_interruption(self) -> None:
        """Cancel the frame in progress, drop queued data, restart the task."""
        current = asyncio.current_task()
        if self._task is not None and self._task is not current:
            await cancel_task(self._task)
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-task")

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        """Default: pass every frame on in its direction."""
        await self.push_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: Direction = DOWN) -> None:
        if direction is DOWN:
            if self._next is not None:
                await self._next.queue_frame(frame, DOWN)
            elif self._down_sink is not None:
                await self._down_sink(frame, DOWN)
        else:
            if self._prev is not None:
                await self._prev.queue_frame(frame, UP)
            elif self._up_sink is not None:
                await self._up_sink(frame, UP)

    async def push_error(self, message: str, fatal: bool = False) -> None:
        """Errors travel upstream, to the pipeline's observer (UIs show them)."""
        await self.push_frame(ErrorFrame(error=message, fatal=fatal, processor=self.name), UP)


class Pipeline:
    """A chain of processors with an observer at both ends."""

    def __init__(self, processors: list[FrameProcessor], observer: Sink) -> None:
        assert processors, "a pipeline needs at least one processor"
        self.processors = processors
        for a, b in zip(processors, processors[1:], strict=False):
            a.link(b)
        processors[0]._up_sink = observer
        processors[-1]._down_sink = observer

    async def start(self) -> None:
        for p in self.processors:
            await p.start()

    async def stop(self) -> None:
        for p in reversed(self.processors):
            await p.stop()

    async def queue_frame(self, frame: Frame) -> None:
        """Inject a frame at the head, travelling downstream."""
        await self.processors[0].queue_frame(frame, DOWN)
